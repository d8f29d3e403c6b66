"""CatVersion (Zhao et al., arXiv 2311.14631): a learned key/value prefix for the last three
self-attention layers (9, 10, 11) of the SD1.x CLIP ViT-L/14 text encoder. Pure torch: the maths
and the file formats, no ComfyUI.

In each prefixed layer the prefix rows are put **before** the token keys and values, and every
query row adds **+1.0** to its logit for a prefix column: the authors' library widens the additive
causal mask with ones. That bias is what the released adapters were trained with, so it is kept::

    K' = [k_prefix; K]    V' = [v_prefix; V]
    logits = s·Q K'ᵀ + [b | causal mask]     (b = 1.0 + ln(strength) per prefix row)
    out = softmax(logits) V'

``strength`` scales a prefix's un-normalised attention weight: 1 is the paper; 2 counts the prefix
as two copies of itself; 0 removes it. Several concepts stack as more prefix rows in the same
softmax, each with its own strength.

Files: the authors' ``pytorch_adapter.bin`` (a flat ``control_trans`` vector
``[K9|V9|K10|V10|K11|V11]``; the layers come from its key names, not from ``adapter_config.json``)
and the pack's safetensors (``...layers.{i}.self_attn.prefix_key``/``prefix_value``, format
``catversion-prefix-v1``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..common.file_kinds import CATVERSION_ADAPTER, refuse_other_kinds, safetensors_shapes, tensor_shapes
from ..common.files import TensorFileError, describe_pickle_error, owned, safetensors_metadata

TEXT_WIDTH = 768  # CLIP ViT-L/14 text: 12 heads x 64
NUM_HEADS = 12
NUM_TEXT_LAYERS = 12
OFFICIAL_LAYERS = (9, 10, 11)
PREFIX_LOGIT_BIAS = 1.0
SAFETENSORS_FORMAT = "catversion-prefix-v1"
CATVERSION_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")
FOLDER = "models/catversion/"

_FLAT_SUFFIX = "clip_text_model_self_prefix.control_trans"
_LAYER_OF_KEY = re.compile(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.")
log = logging.getLogger("elite.catversion")

_NEEDED = ("CatVersion Adapter Loader reads the authors' pytorch_adapter.bin (renamed after its concept, e.g. "
           f"teddybear.bin) or a .safetensors made by CatVersion Train Concept, from {FOLDER}.")
_ACCEPTED = (CATVERSION_ADAPTER,)
_AN_ADAPTER = "a CatVersion adapter"
# what the loader reads, in file terms: for the log (the artist's message says where files come from)
_LAYOUT = (
    "the authors' pytorch_adapter.bin holds a flat '...clip_text_model_self_prefix.control_trans' vector of "
    "2 x 768 values per layer; the pack's safetensors holds 'text_model.encoder.layers.<i>.self_attn.prefix_key' "
    "/ 'prefix_value' tensors (format catversion-prefix-v1)"
)


class CatVersionFormatError(TensorFileError):
    """The file is not a CatVersion adapter (or is damaged)."""


@dataclass(frozen=True, eq=False)
class CatVersionPrefix:
    """One concept: per-layer key and value prefix rows, fp32 on the CPU.

    ``keys``/``values`` are (num_layers, prefix_length, 768) in k_proj channel order (head-major);
    row j belongs to text-encoder layer ``layers[j]`` (0-based).
    """

    layers: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor
    logit_bias: float = PREFIX_LOGIT_BIAS
    name: str = "CatVersion adapter"

    def __post_init__(self):
        expected = (len(self.layers), self.keys.shape[1] if self.keys.dim() == 3 else -1, TEXT_WIDTH)
        if self.keys.dim() != 3 or tuple(self.keys.shape) != expected or self.values.shape != self.keys.shape:
            raise CatVersionFormatError(
                f"'{self.name}': prefixes of shape {tuple(self.keys.shape)} / {tuple(self.values.shape)} do not "
                f"fit {len(self.layers)} layers of {TEXT_WIDTH}-wide CLIP-L text attention."
            )
        if not all(0 <= layer < NUM_TEXT_LAYERS for layer in self.layers) or len(set(self.layers)) != len(self.layers):
            raise CatVersionFormatError(f"'{self.name}': layers {self.layers} are not distinct CLIP-L text layers 0..11.")
        bad = [t for t in (self.keys, self.values) if not torch.isfinite(t).all()]
        if bad or not math.isfinite(self.logit_bias):
            raise CatVersionFormatError(f"'{self.name}' contains non-finite values (NaN or inf): the file is damaged.")

    @property
    def prefix_length(self) -> int:
        return self.keys.shape[1]

    def layer_prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values), each (prefix_length, 768), of ``layer``; None when it has no prefix."""
        if layer not in self.layers:
            return None
        j = self.layers.index(layer)
        return self.keys[j], self.values[j]


# --------------------------------------------------------------------------- maths


def prefixes_from_flat(flat: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' flat ``control_trans`` -> (keys, values), each (num_layers, P, 768).

    Its layout is (P, 2·L, 768) with rows alternating key/value per layer: [K9|V9|K10|V10|K11|V11]
    for P = 1 (FlatPrefixTuning's view and permute, written as a reshape).
    """
    per_prefix = 2 * num_layers * TEXT_WIDTH
    if flat.dim() != 1 or flat.numel() == 0 or flat.numel() % per_prefix:
        raise CatVersionFormatError(
            f"a flat prefix of {flat.numel()} values does not split into {num_layers} layers x key/value x {TEXT_WIDTH}."
        )
    rows = flat.reshape(flat.numel() // per_prefix, 2 * num_layers, TEXT_WIDTH)
    return rows[:, 0::2].transpose(0, 1).contiguous(), rows[:, 1::2].transpose(0, 1).contiguous()


def flat_from_prefixes(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`prefixes_from_flat`."""
    rows = torch.stack([keys.transpose(0, 1), values.transpose(0, 1)], dim=2)  # (P, L, 2, 768)
    return rows.reshape(-1)


def prefix_logit_bias(logit_bias: float, strength: float) -> float:
    """The additive logit of a prefix column: the trained bias plus ln(strength) (strength > 0)."""
    return logit_bias + math.log(strength)


def widen_mask(mask: torch.Tensor | None, biases: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Prepend one column per prefix row to an additive attention mask: (..., N, N) -> (..., N, P+N).

    ``biases`` (P,) are the prefix columns' logits (1.0 + ln strength). A missing mask means no mask
    on the token columns.
    """
    if mask is None:
        mask = torch.zeros(num_tokens, num_tokens, dtype=biases.dtype, device=biases.device)
    prefix = biases.to(mask.dtype).expand(*mask.shape[:-1], biases.shape[0])
    return torch.cat([prefix, mask], dim=-1)


def prefixed_attention(q, k, v, heads: int, mask, k_prefix, v_prefix, biases, attention):
    """Self-attention with prefix rows before the token keys/values, in ComfyUI's convention
    ((batch, tokens, heads·64) tensors, ``attention(q, k, v, heads, mask)``)."""
    batch, num_tokens, _ = q.shape
    k = torch.cat([k_prefix.to(k).expand(batch, -1, -1), k], dim=1)
    v = torch.cat([v_prefix.to(v).expand(batch, -1, -1), v], dim=1)
    return attention(q, k, v, heads, widen_mask(mask, biases.to(q), num_tokens))


# --------------------------------------------------------------------------- files


def _unknown_file(name: str, found: str) -> str:
    """A file that is neither an adapter nor another model file the pack recognises."""
    log.debug("CatVersion: %s holds %s; %s", name, found, _LAYOUT)
    return f"'{name}' is not a CatVersion adapter, nor another kind of model file the pack knows ({found}). {_NEEDED}"


def _damaged(name: str, detail: str) -> str:
    log.debug("CatVersion: %s: %s; %s", name, detail, _LAYOUT)
    return (f"'{name}' looks like a CatVersion adapter but is damaged or incomplete ({detail}): download or train it "
            f"again into {FOLDER}.")


def _layers_from_official_keys(state: dict[str, torch.Tensor], name: str) -> tuple[tuple[int, ...], torch.Tensor]:
    flats = {key: t for key, t in state.items() if key.endswith(_FLAT_SUFFIX)}
    if not flats:
        raise CatVersionFormatError(_unknown_file(name, f"{len(state)} tensors, e.g. {next(iter(state), 'none')}"))
    layers = sorted({int(m.group(1)) for key in flats for m in [_LAYER_OF_KEY.search(key)] if m})
    first = next(iter(flats.values()))
    if any(t.shape != first.shape or not torch.equal(t, first) for t in flats.values()):
        raise CatVersionFormatError(f"'{name}': its prefix copies ({len(flats)} keys) differ; the file is damaged.")
    if not layers:
        raise CatVersionFormatError(_damaged(name, "no 'text_model.encoder.layers.<i>' key says which layers it prefixes"))
    return tuple(layers), first


def _official_prefix(state: dict[str, torch.Tensor], name: str) -> CatVersionPrefix:
    """The prefix held by the authors' flat ``control_trans`` keys (from a .bin or a copy in safetensors)."""
    layers, flat = _layers_from_official_keys(state, name)
    try:
        keys, values = prefixes_from_flat(flat.float(), len(layers))
    except CatVersionFormatError as exc:
        raise CatVersionFormatError(_damaged(name, str(exc))) from None
    return CatVersionPrefix(layers=layers, keys=keys, values=values, name=name)


def read_official_adapter(path: str) -> CatVersionPrefix:
    """The authors' ``pytorch_adapter.bin`` (weights-only load; layers from the key names)."""
    name = os.path.basename(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or unsafe files
        raise CatVersionFormatError(describe_pickle_error(path, exc, "CatVersion adapters", FOLDER)) from exc
    refuse_other_kinds(name, tensor_shapes(state), {}, _ACCEPTED, _AN_ADAPTER, _NEEDED, CatVersionFormatError)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CatVersionFormatError(_unknown_file(name, f"a {type(state).__name__}, not a dict of tensors"))
    return _official_prefix(owned(state), name)


def read_catversion_safetensors(path: str) -> CatVersionPrefix:
    name = os.path.basename(path)
    metadata = safetensors_metadata(path, FOLDER, CatVersionFormatError)
    shapes = safetensors_shapes(path)
    refuse_other_kinds(name, shapes, metadata, _ACCEPTED, _AN_ADAPTER, _NEEDED, CatVersionFormatError)
    if metadata.get("format") != SAFETENSORS_FORMAT and not any(key.endswith(_FLAT_SUFFIX) for key in shapes):
        raise CatVersionFormatError(_unknown_file(
            name, f"format {metadata.get('format', 'not recorded')!r}, {len(shapes)} tensors, e.g. {next(iter(shapes), 'none')}"))
    with safe_open(path, framework="pt", device="cpu") as f:
        tensors = owned({key: f.get_tensor(key) for key in f.keys()})
    if metadata.get("format") != SAFETENSORS_FORMAT:
        return _official_prefix(tensors, name)
    layers = sorted({int(m.group(1)) for key in tensors for m in [_LAYER_OF_KEY.search(key)] if m})
    try:
        keys = torch.stack([tensors[f"text_model.encoder.layers.{i}.self_attn.prefix_key"] for i in layers]).float()
        values = torch.stack([tensors[f"text_model.encoder.layers.{i}.self_attn.prefix_value"] for i in layers]).float()
        bias = float(metadata.get("prefix_logit_bias", PREFIX_LOGIT_BIAS))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CatVersionFormatError(_damaged(name, f"incomplete or inconsistent prefixes ({exc})")) from None
    recorded = metadata.get("layers")
    if recorded and tuple(int(x) for x in recorded.split(",")) != tuple(layers):
        raise CatVersionFormatError(f"'{name}': its metadata says layers {recorded}, its tensors are for {layers}.")
    return CatVersionPrefix(layers=tuple(layers), keys=keys, values=values, logit_bias=bias, name=name)


def read_catversion_file(path: str) -> CatVersionPrefix:
    """A CatVersion adapter from the authors' .bin or the pack's safetensors; anything else is refused."""
    name = os.path.basename(path)
    ext = os.path.splitext(name)[1].lower()
    if ext not in CATVERSION_EXTENSIONS:
        raise CatVersionFormatError(f"'{name}' has the extension '{ext}': CatVersion adapters are "
                                    f"{', '.join(CATVERSION_EXTENSIONS)} files. {_NEEDED}")
    if os.path.getsize(path) == 0:
        raise CatVersionFormatError(f"'{name}' is empty (0 bytes): fetch it again into {FOLDER}.")
    if ext == ".safetensors":
        return read_catversion_safetensors(path)
    return read_official_adapter(path)


def save_catversion_safetensors(prefix: CatVersionPrefix, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write ``prefix`` in the pack's format (one key/value pair per layer, fp32)."""
    tensors = {}
    for j, layer in enumerate(prefix.layers):
        tensors[f"text_model.encoder.layers.{layer}.self_attn.prefix_key"] = prefix.keys[j].float().contiguous()
        tensors[f"text_model.encoder.layers.{layer}.self_attn.prefix_value"] = prefix.values[j].float().contiguous()
    header = {
        **(metadata or {}), "format": SAFETENSORS_FORMAT, "layers": ",".join(map(str, prefix.layers)),
        "prefix_length": str(prefix.prefix_length), "num_heads": str(NUM_HEADS), "head_dim": str(TEXT_WIDTH // NUM_HEADS),
        "prefix_position": "before token keys/values", "prefix_logit_bias": repr(prefix.logit_bias),
    }
    save_file(tensors, path, metadata=header)
