"""Convert an ELITE mapper checkpoint to safetensors and verify the round trip.

Usage (from the pack's folder, with ComfyUI's Python)::

    python -m elite_core.convert global_mapper.pt global_mapper.safetensors

The output records the mapper's kind (global or local) so the loaders can refuse the wrong one.
The official files carry no kind; it is taken from ``--kind`` or, failing that, from the source
file's name (``global_mapper.pt`` / ``local_mapper.pt``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from ..common.files import write_atomically
from .checkpoint import (
    MAPPER_KINDS,
    MapperFormatError,
    load_mapper_state_dict,
    read_mapper_kind,
    read_tensor_file,
    save_mapper_safetensors,
)

log = logging.getLogger("elite.convert")


def mapper_kind(src: str, kind: str | None = None) -> str:
    """The kind to record: ``kind`` if given, else the source's metadata, else its file name."""
    recorded = read_mapper_kind(src)
    if kind is not None:
        if recorded is not None and recorded != kind:
            raise MapperFormatError(f"'{os.path.basename(src)}' is recorded as a {recorded} mapper, not {kind}.")
        return kind
    if recorded is not None:
        return recorded
    named = [k for k in MAPPER_KINDS if k in os.path.basename(src).lower()]
    if len(named) != 1:
        raise MapperFormatError(
            f"Cannot tell whether '{os.path.basename(src)}' is the global or the local mapper (the two have "
            "the same layout): pass --kind global or --kind local."
        )
    return named[0]


def convert(src: str, dst: str, kind: str | None = None) -> int:
    """Convert ``src`` to safetensors at ``dst``; return the number of tensors verified."""
    if not dst.lower().endswith(".safetensors"):
        raise MapperFormatError(f"The output '{dst}' must end in .safetensors.")
    state_dict, widths = load_mapper_state_dict(src)
    kind = mapper_kind(src, kind)
    write_atomically(dst, lambda partial: save_mapper_safetensors(state_dict, partial, kind=kind))
    reread = read_tensor_file(dst)
    if reread.keys() != state_dict.keys():
        raise MapperFormatError(f"Round trip changed the key set of '{dst}'.")
    for key, tensor in state_dict.items():
        if reread[key].dtype != tensor.dtype or not torch.equal(reread[key], tensor):
            raise MapperFormatError(f"Round trip changed tensor '{key}' in '{dst}'.")
    log.info(
        "wrote %s (%s mapper): %d tensors, %d parameters, widths %d -> %d -> %d, verified bit-exact",
        dst, kind, len(state_dict), sum(t.numel() for t in state_dict.values()),
        widths.input_dim, widths.hidden_dim, widths.output_dim,
    )
    return len(state_dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elite_core.convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="global_mapper.pt / local_mapper.pt (or any ELITE mapper file)")
    parser.add_argument("target", help="output .safetensors path")
    parser.add_argument("--kind", choices=MAPPER_KINDS,
                        help="global or local (default: from the source file's name or metadata)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.source, args.target, args.kind)
    except (MapperFormatError, OSError) as exc:
        log.error("error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
