"""Reading and writing ELITE mapper checkpoints.

The official ``global_mapper.pt`` / ``local_mapper.pt`` are plain fp32 state dicts saved with
``torch.save``. They are read with ``weights_only=True`` (never a free unpickle) or, preferably,
from ``.safetensors``. A file is recognised as an ELITE mapper by its key set; anything else is
refused with a message that says what was found and what was expected.
"""

from __future__ import annotations

import os
from collections import Counter

import torch
from safetensors.torch import load_file, save_file

from .mappers import NUM_WORDS, MapperWidths, expected_keys
from .sites import SD1_ATTN2_SITES

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
MAPPER_EXTENSIONS = SAFETENSORS_EXTENSIONS + PICKLE_EXTENSIONS

_EXPECTED_LAYOUT = (
    "an ELITE mapper holds 132 tensors: mapping_{0..4}.{0,1,3,4,6}.weight/bias, "
    "mapping_patch_{0..4}.* with the same layout, and '<layer>_to_k.weight' / '<layer>_to_v.weight' "
    "for the 16 SD1.x cross-attention layers (e.g. "
    "'down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.weight')"
)


class MapperFormatError(ValueError):
    """The file is not an ELITE mapper checkpoint (or is damaged)."""


def read_tensor_file(path: str) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict from safetensors or a weights-only torch pickle."""
    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in SAFETENSORS_EXTENSIONS:
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise MapperFormatError(f"Could not read '{name}' as safetensors: {exc}") from exc
    if ext in PICKLE_EXTENSIONS:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MapperFormatError(
                f"Could not read '{name}' as a weights-only torch checkpoint ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). ELITE mappers contain only tensors; "
                "a file that needs arbitrary Python objects is refused for safety."
            ) from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise MapperFormatError(
                f"'{name}' holds a {type(obj).__name__}, not a dict of tensors; {_EXPECTED_LAYOUT}."
            )
        return dict(obj)
    raise MapperFormatError(
        f"'{name}' has the extension '{ext}'; ELITE mappers are read from {', '.join(MAPPER_EXTENSIONS)}."
    )


def _strip_common_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Mappers saved from a DistributedDataParallel wrapper carry a 'module.' prefix.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _summarise_keys(keys) -> str:
    roots = Counter(k.split(".")[0] for k in keys)
    common = ", ".join(f"'{root}' ({n})" for root, n in roots.most_common(4))
    return f"{len(keys)} tensors, mostly under {common}"


def widths_from_state_dict(state_dict: dict[str, torch.Tensor]) -> MapperWidths:
    """Read a mapper's widths from its tensors; raise MapperFormatError when it is not a mapper."""
    first, last = state_dict.get("mapping_0.0.weight"), state_dict.get("mapping_0.6.weight")
    kv = [state_dict.get(site.ckpt_to_k) for site in SD1_ATTN2_SITES]
    if first is None or last is None or any(w is None for w in kv):
        raise MapperFormatError(f"Not an ELITE mapper: found {_summarise_keys(state_dict)}; {_EXPECTED_LAYOUT}.")
    if first.dim() != 2 or last.dim() != 2 or any(w.dim() != 2 for w in kv):
        raise MapperFormatError("Not an ELITE mapper: its linear weights are not matrices.")
    return MapperWidths(
        input_dim=first.shape[1],
        hidden_dim=first.shape[0],
        output_dim=last.shape[0],
        kv_dims=tuple(w.shape[0] for w in kv),
    )


def validate_mapper_state_dict(state_dict: dict[str, torch.Tensor]) -> MapperWidths:
    """Check the exact key set and every shape; return the widths."""
    widths = widths_from_state_dict(state_dict)
    expected = expected_keys(widths)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise MapperFormatError(f"Incomplete ELITE mapper: {'; '.join(detail)}; {_EXPECTED_LAYOUT}.")
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if tuple(state_dict[k].shape) != shape
    ]
    if wrong:
        raise MapperFormatError(f"ELITE mapper with inconsistent shapes: {'; '.join(wrong[:3])}.")
    non_float = [k for k, v in state_dict.items() if not v.is_floating_point()]
    if non_float:
        raise MapperFormatError(f"ELITE mapper tensors must be floating point; {non_float[0]} is {state_dict[non_float[0]].dtype}.")
    return widths


def load_mapper_state_dict(path: str) -> tuple[dict[str, torch.Tensor], MapperWidths]:
    """Read and validate a mapper checkpoint; tensors are returned as fp32 on the CPU."""
    state_dict = _strip_common_prefix(read_tensor_file(path))
    try:
        widths = validate_mapper_state_dict(state_dict)
    except MapperFormatError as exc:
        raise MapperFormatError(f"'{os.path.basename(path)}': {exc}") from None
    return {k: v.float().contiguous() for k, v in state_dict.items()}, widths


def save_mapper_safetensors(state_dict: dict[str, torch.Tensor], path: str, kind: str | None = None) -> None:
    """Write a validated mapper state dict as safetensors (contiguous CPU tensors)."""
    validate_mapper_state_dict(state_dict)
    metadata = {"format": "elite_mapper", "num_words": str(NUM_WORDS)}
    if kind:
        metadata["elite_kind"] = kind
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, path, metadata=metadata)


__all__ = [
    "MAPPER_EXTENSIONS",
    "MapperFormatError",
    "MapperWidths",
    "load_mapper_state_dict",
    "read_tensor_file",
    "save_mapper_safetensors",
    "validate_mapper_state_dict",
    "widths_from_state_dict",
]
