"""Convert an ELITE mapper checkpoint to safetensors and verify the round trip.

Usage (from the pack's folder, with ComfyUI's Python)::

    python -m elite_core.convert global_mapper.pt global_mapper.safetensors
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from .checkpoint import MapperFormatError, load_mapper_state_dict, read_tensor_file, save_mapper_safetensors

log = logging.getLogger("elite.convert")


def convert(src: str, dst: str) -> int:
    """Convert ``src`` to safetensors at ``dst``; return the number of tensors verified."""
    if not dst.lower().endswith(".safetensors"):
        raise MapperFormatError(f"The output '{dst}' must end in .safetensors.")
    state_dict, widths = load_mapper_state_dict(src)
    save_mapper_safetensors(state_dict, dst)
    reread = read_tensor_file(dst)
    if reread.keys() != state_dict.keys():
        raise MapperFormatError(f"Round trip changed the key set of '{dst}'.")
    for key, tensor in state_dict.items():
        if reread[key].dtype != tensor.dtype or not torch.equal(reread[key], tensor):
            raise MapperFormatError(f"Round trip changed tensor '{key}' in '{dst}'.")
    log.info(
        "wrote %s: %d tensors, %d parameters, widths %d -> %d -> %d, verified bit-exact",
        dst, len(state_dict), sum(t.numel() for t in state_dict.values()),
        widths.input_dim, widths.hidden_dim, widths.output_dim,
    )
    return len(state_dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elite_core.convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="global_mapper.pt / local_mapper.pt (or any ELITE mapper file)")
    parser.add_argument("target", help="output .safetensors path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.source, args.target)
    except (MapperFormatError, OSError) as exc:
        log.error("error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
