"""Reading and writing ELITE mapper checkpoints.

The official ``global_mapper.pt`` / ``local_mapper.pt`` are plain fp32 state dicts saved with
``torch.save``. They are read with ``weights_only=True`` (never a free unpickle) or, preferably,
from ``.safetensors``. A file is recognised as an ELITE mapper by its key set; anything else is
refused with a message that says what was found and what was expected. Damaged files (empty,
truncated, NaN/inf values) are refused with a message that says exactly that.

Every safetensors file the pack writes records its kind (``elite_kind``: global or local) in its
metadata, and the loaders refuse the wrong kind. The official ``.pt`` files carry no metadata and
have identical layouts, so for them the loader the user picks decides.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter

import torch
from safetensors.torch import load_file, save_file

from ..common.file_kinds import ELITE_MAPPERS, refuse_other_kinds, safetensors_shapes, tensor_shapes
from ..common.files import (
    PICKLE_EXTENSIONS,
    SAFETENSORS_EXTENSIONS,
    TensorFileError,
    describe_pickle_error,
    fetch_again,
    owned,
    safetensors_metadata,
)
from .mappers import NUM_WORDS, MapperWidths, expected_keys
from .sites import SD1_ATTN2_SITES, describe_sd1_kv_layout, first_off_layout_site, sd1_base_width

MAPPER_EXTENSIONS = SAFETENSORS_EXTENSIONS + PICKLE_EXTENSIONS
MAPPER_KINDS = ("global", "local")
KIND_METADATA_KEY = "elite_kind"

_EXPECTED_LAYOUT = (
    "an ELITE mapper holds 132 tensors: mapping_{0..4}.{0,1,3,4,6}.weight/bias, "
    "mapping_patch_{0..4}.* with the same layout, and '<layer>_to_k.weight' / '<layer>_to_v.weight' "
    "for the 16 SD1.x cross-attention layers (e.g. "
    "'down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.weight')"
)
MODELS_SUBFOLDER = "models/elite/"


class MapperFormatError(TensorFileError):
    """The file is not an ELITE mapper checkpoint (or is damaged)."""


# --------------------------------------------------------------------------- reading


def _needed(kind: str | None) -> str:
    if kind is None:
        return ("ELITE's mapper loaders read global_mapper.pt and local_mapper.pt (or their .safetensors "
                f"conversions) from {MODELS_SUBFOLDER}.")
    return (f"ELITE {kind.capitalize()} Mapper Loader reads {kind}_mapper.pt (or its .safetensors conversion) "
            f"from {MODELS_SUBFOLDER}.")


def _refuse_other_kinds(name: str, shapes, metadata: dict[str, str], kind: str | None) -> None:
    """Refuse, in words, a file that is recognisably something else (a LoRA, an embedding, a checkpoint...)."""
    refuse_other_kinds(name, shapes, metadata, ELITE_MAPPERS, "an ELITE mapper", _needed(kind), MapperFormatError)


def read_tensor_file_with_metadata(path: str, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a flat ``{name: tensor}`` dict and its metadata (empty for torch pickles). A file that is
    recognisably something else is refused in words, a safetensors file before its tensors are read;
    ``kind`` ('global'/'local', or None) is the loader the message names, and a safetensors mapper
    recorded as the other kind is refused."""
    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in MAPPER_EXTENSIONS:
        raise MapperFormatError(
            f"'{name}' has the extension '{ext}'; ELITE mappers are read from {', '.join(MAPPER_EXTENSIONS)}."
        )
    if os.path.getsize(path) == 0:
        raise MapperFormatError(f"'{name}' is empty (0 bytes). {fetch_again(MODELS_SUBFOLDER)}")
    if ext in SAFETENSORS_EXTENSIONS:
        metadata = safetensors_metadata(path, MODELS_SUBFOLDER, MapperFormatError)
        _check_kind(name, metadata, kind)
        _refuse_other_kinds(name, safetensors_shapes(path), metadata, kind)
        try:
            return owned(load_file(path, device="cpu")), metadata
        except Exception as exc:  # safetensors raises its own error types
            raise MapperFormatError(f"Could not read '{name}' as safetensors: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise MapperFormatError(describe_pickle_error(path, exc, "ELITE mappers", MODELS_SUBFOLDER,
                                                     convert="python -m elite_core.convert")) from exc
    _refuse_other_kinds(name, tensor_shapes(obj), {}, kind)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MapperFormatError(f"'{name}' holds a {type(obj).__name__}, not a dict of tensors; {_EXPECTED_LAYOUT}.")
    return owned(obj), {}


def read_tensor_file(path: str) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict from safetensors or a weights-only torch pickle."""
    return read_tensor_file_with_metadata(path)[0]


# --------------------------------------------------------------------------- recognising


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


def _check_kv_layout(state_dict: dict[str, torch.Tensor], widths: MapperWidths) -> None:
    """The 16 K/V pairs must have the SD1.x site table's shapes: rows c·(1,1,2,2,4,...) for one c."""
    if sd1_base_width(widths.kv_dims) is not None:
        return
    site, found, expected = first_off_layout_site(widths.kv_dims)
    base = widths.kv_dims[0] // SD1_ATTN2_SITES[0].base_channels_mult
    raise MapperFormatError(
        f"its cross-attention K/V do not have the SD1.x layout: '{site.ckpt_to_k}' is "
        f"{tuple(state_dict[site.ckpt_to_k].shape)}, expected ({expected}, {widths.output_dim}) "
        f"(the 16 K/V pairs of an SD1.x UNet are {describe_sd1_kv_layout(base, widths.output_dim)} by "
        f"site; the official mappers have {describe_sd1_kv_layout(320)}). The mapper file is damaged "
        "or was not made for Stable Diffusion 1.x."
    )


def validate_mapper_state_dict(state_dict: dict[str, torch.Tensor]) -> MapperWidths:
    """Check the exact key set, every shape, the SD1.x K/V layout and the values; return the widths."""
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
    _check_kv_layout(state_dict, widths)
    non_float = [k for k, v in state_dict.items() if not v.is_floating_point()]
    if non_float:
        raise MapperFormatError(
            f"ELITE mapper tensors must be floating point; {non_float[0]} is {state_dict[non_float[0]].dtype}.")
    non_finite = [k for k, v in state_dict.items() if not torch.isfinite(v).all()]
    if non_finite:
        raise MapperFormatError(
            f"it contains non-finite values (NaN or inf) in {len(non_finite)} of {len(state_dict)} tensors "
            f"(e.g. {non_finite[0]}). The file is damaged or was saved from a training run that diverged; "
            "fetch or export it again."
        )
    return widths


def _check_kind(name: str, metadata: dict[str, str], kind: str | None) -> None:
    recorded = metadata.get(KIND_METADATA_KEY)
    if kind is None or recorded is None or recorded == kind:
        return
    raise MapperFormatError(
        f"'{name}' is an ELITE {recorded} mapper (its metadata says so), but it was given to the {kind} "
        f"mapper loader. Load it with 'ELITE {recorded.capitalize()} Mapper Loader', and choose the "
        f"{kind} mapper file ({kind}_mapper.pt or its .safetensors conversion) here."
    )


def load_mapper_state_dict(path: str, kind: str | None = None) -> tuple[dict[str, torch.Tensor], MapperWidths]:
    """Read and validate a mapper checkpoint; tensors are returned as fp32 on the CPU.

    ``kind`` ('global' or 'local'): refuse a file whose metadata records the other kind.
    """
    if kind is not None and kind not in MAPPER_KINDS:
        raise ValueError(f"kind must be one of {MAPPER_KINDS}, got {kind!r}")
    name = os.path.basename(path)
    state_dict, _ = read_tensor_file_with_metadata(path, kind)
    state_dict = _strip_common_prefix(state_dict)
    try:
        widths = validate_mapper_state_dict(state_dict)
    except MapperFormatError as exc:
        raise MapperFormatError(f"'{name}': {exc}") from None
    return {k: v.float().contiguous() for k, v in state_dict.items()}, widths


def read_mapper_kind(path: str) -> str | None:
    """The kind recorded in a safetensors mapper's metadata, or None (torch pickles, older files)."""
    if os.path.splitext(path)[1].lower() not in SAFETENSORS_EXTENSIONS:
        return None
    return safetensors_metadata(path, MODELS_SUBFOLDER, MapperFormatError).get(KIND_METADATA_KEY)


# --------------------------------------------------------------------------- writing


def save_mapper_safetensors(state_dict: dict[str, torch.Tensor], path: str, *, kind: str,
                            metadata: dict[str, str] | None = None) -> None:
    """Write a validated mapper state dict as safetensors, recording its kind ('global'/'local')
    and any extra ``metadata`` (strings)."""
    if kind not in MAPPER_KINDS:
        raise ValueError(f"kind must be one of {MAPPER_KINDS}, got {kind!r}")
    validate_mapper_state_dict(state_dict)
    header = {**(metadata or {}), "format": "elite_mapper", "num_words": str(NUM_WORDS), KIND_METADATA_KEY: kind}
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, path, metadata=header)


__all__ = [
    "MAPPER_EXTENSIONS",
    "MAPPER_KINDS",
    "MapperFormatError",
    "MapperWidths",
    "load_mapper_state_dict",
    "read_mapper_kind",
    "read_tensor_file",
    "read_tensor_file_with_metadata",
    "save_mapper_safetensors",
    "validate_mapper_state_dict",
    "widths_from_state_dict",
]
