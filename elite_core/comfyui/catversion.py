"""CatVersion on ComfyUI's SD1.x CLIP: the models/catversion folder, the loader and the patch.

Part of the ComfyUI adapter. The patch is an object patch on a clone of the CLIP's ModelPatcher:
the self-attention module of each prefixed layer is swapped for :class:`PrefixedSelfAttention`
while the clone is loaded, and ComfyUI swaps the original back when the plain CLIP (e.g. for the
negative prompt) is loaded. The wrapper reuses the layer's own projection modules, so weight
patches (LoRA) and offloading act on it as on the original.

CLIP Set Last Layer stores its value on the CLIP object (``CLIP.layer_idx``, set by ``clip_layer``),
and ComfyUI hands it to the text encoder at each encode (``set_clip_options({"layer": ...})``; both
0.3.75 and 0.33.0). A cut before CatVersion Apply is seen when the adapter is applied; one after it
only when the prompt is encoded, so the prefixed layers also look at the encoder's options then
(:class:`LayerCutWatch`) and warn, once per CatVersion Apply, that the layers after the cut are not used.
"""

from __future__ import annotations

import logging

import torch

import comfy.utils
import folder_paths

from ..catversion.prefix import (
    CATVERSION_EXTENSIONS,
    NUM_HEADS,
    NUM_TEXT_LAYERS,
    TEXT_WIDTH,
    CatVersionPrefix,
    prefix_logit_bias,
    prefixed_attention,
    read_catversion_file,
)
from ..common.checks import ELITEInputError, check_number
from ..common.tensors import LazyTensors
from .folders import missing_file_message, register_folder

log = logging.getLogger("elite.catversion")

MODEL_FOLDER = "catversion"
_TEXT_LAYER = "clip_l.transformer.text_model.encoder.layers.{}"
_SELF_ATTN = _TEXT_LAYER + ".self_attn"
_TEXT_MODEL = "clip_l"  # the SDClipModel that receives the layer options of each encode


def register_model_folder() -> None:
    """Register ``models/catversion`` for adapter files."""
    register_folder(MODEL_FOLDER, CATVERSION_EXTENSIONS)


def adapter_file_names() -> list[str]:
    return folder_paths.get_filename_list(MODEL_FOLDER)


def missing_adapter_message(name) -> str | None:
    return missing_file_message(MODEL_FOLDER, name, "CatVersion adapter",
                                "the authors' pytorch_adapter.bin (renamed, e.g. teddybear.bin) or a CatVersion .safetensors")


def load_adapter(name: str) -> CatVersionPrefix:
    problem = missing_adapter_message(name)
    if problem:
        raise ELITEInputError(problem)
    prefix = read_catversion_file(folder_paths.get_full_path(MODEL_FOLDER, name))
    log.info("loaded CatVersion adapter %s: layers %s, %d prefix row(s)", name, prefix.layers, prefix.prefix_length)
    return prefix


class PrefixedAttentionBase(torch.nn.Module):
    """A CLIP text self-attention with key/value prefix rows (ComfyUI's CLIPAttention interface).

    It reuses the wrapped layer's projection modules; subclasses say where the rows come from.
    """

    watch: "LayerCutWatch | None" = None  # set by CatVersion Apply: warns when the encoder stops before this layer

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.heads = base.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = base.q_proj, base.k_proj, base.v_proj, base.out_proj
        self.base = [base]  # the unwrapped module (in a list: not a submodule, its weights are ours)

    def rows(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys (P, 768), values (P, 768), logit biases (P,)) in ``device``/``dtype``."""
        raise NotImplementedError

    def forward(self, x, mask=None, optimized_attention=None):
        if self.watch is not None:
            self.watch.check()
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        k_prefix, v_prefix, biases = self.rows(q.device, q.dtype)
        out = prefixed_attention(q, k, v, self.heads, mask, k_prefix.unsqueeze(0), v_prefix.unsqueeze(0), biases,
                                 optimized_attention)
        return self.out_proj(out)


class PrefixedSelfAttention(PrefixedAttentionBase):
    """Fixed prefix rows: ``keys``/``values`` (P, 768) and ``biases`` (P,) are kept as fp32 CPU
    tensors; copies in the compute device and dtype are made on first use."""

    def __init__(self, base: torch.nn.Module, keys: torch.Tensor, values: torch.Tensor, biases: torch.Tensor):
        super().__init__(base)
        self.prefix = (keys.detach().float().cpu(), values.detach().float().cpu(), biases.detach().float().cpu())
        self._on_device = LazyTensors(lambda device, dtype: tuple(t.to(device, dtype) for t in self.prefix))

    def stacked_with(self, keys: torch.Tensor, values: torch.Tensor, biases: torch.Tensor) -> "PrefixedSelfAttention":
        """A new wrapper of the same layer with this one's prefix rows followed by more."""
        k, v, b = self.prefix
        return PrefixedSelfAttention(self.base[0], torch.cat([k, keys]), torch.cat([v, values]), torch.cat([b, biases]))

    def rows(self, device, dtype):
        return self._on_device.get(device, dtype)


def text_layer_key(layer: int) -> str:
    """The module path of text layer ``layer`` (0-based) in ComfyUI's SD1 CLIP."""
    return _TEXT_LAYER.format(layer)


def self_attention_key(layer: int) -> str:
    """The object-patch key of text layer ``layer``'s self-attention in ComfyUI's SD1 CLIP."""
    return _SELF_ATTN.format(layer)


def unwrapped_self_attention(clip, layer: int) -> torch.nn.Module:
    """Layer ``layer``'s own self-attention module, even while a prefixed clone is loaded."""
    module = comfy.utils.get_attr(clip.cond_stage_model, self_attention_key(layer))
    return module.base[0] if isinstance(module, PrefixedAttentionBase) else module


def check_sd1_clip(clip) -> list[torch.nn.Module]:
    """The 12 self-attention modules of an SD1.x CLIP-L text encoder; refuse anything else."""
    tokens = clip.tokenize("a")
    if set(tokens.keys()) != {"l"}:
        raise ELITEInputError(
            f"This CLIP has text encoders {sorted(tokens.keys())}; CatVersion adapters are trained for Stable "
            "Diffusion 1.x (one CLIP ViT-L text encoder). Load an SD1.x checkpoint."
        )
    try:
        layers = [comfy.utils.get_attr(clip.cond_stage_model, _SELF_ATTN.format(i)) for i in range(NUM_TEXT_LAYERS)]
        widths = {layer.k_proj.weight.shape for layer in layers}
        heads = {layer.heads for layer in layers}
    except AttributeError:
        layers, widths, heads = [], set(), set()
    if len(layers) != NUM_TEXT_LAYERS or widths != {(TEXT_WIDTH, TEXT_WIDTH)} or heads != {NUM_HEADS}:
        raise ELITEInputError(
            "This CLIP is not the SD1.x CLIP ViT-L/14 text encoder (12 layers, 768 wide, 12 heads) that "
            f"CatVersion adapters are trained for (found widths {sorted(widths)}, heads {sorted(heads)}). "
            "Load an SD1.x checkpoint."
        )
    return layers


def apply_catversion(clip, prefix: CatVersionPrefix, strength: float = 1.0):
    """A clone of ``clip`` whose prefixed layers attend to ``prefix`` (strength 1 = the paper).

    Applied to a CLIP that already has CatVersion prefixes, the new rows join them in the same
    softmax (several concepts). Strength 0 returns an unpatched clone. A CLIP Set Last Layer cut
    that leaves prefixed layers unused is warned about now (cut before) or when the prompt is
    encoded (cut after), once.
    """
    strength = check_number("strength", strength, 0.0, 10.0)
    check_sd1_clip(clip)
    patched = clip.clone()
    if strength == 0.0:
        return patched
    bias = torch.tensor([prefix_logit_bias(prefix.logit_bias, strength)] * prefix.prefix_length)
    names = [prefix.name or "adapter"]
    wrappers = []
    for j, layer in enumerate(prefix.layers):
        key = _SELF_ATTN.format(layer)
        current = patched.patcher.object_patches.get(key)
        if isinstance(current, PrefixedSelfAttention):
            wrapper = current.stacked_with(prefix.keys[j], prefix.values[j], bias)
            names[:0] = [name for name in (current.watch.names if current.watch else []) if name not in names]
        else:
            wrapper = PrefixedSelfAttention(unwrapped_self_attention(patched, layer), prefix.keys[j], prefix.values[j], bias)
        patched.patcher.add_object_patch(key, wrapper)
        wrappers.append(wrapper)
    watch = LayerCutWatch(comfy.utils.get_attr(patched.cond_stage_model, _TEXT_MODEL), prefix.layers, names)
    for wrapper in wrappers:
        wrapper.watch = watch
    last = clip_last_layer(patched)
    if watch.cut(last):
        log.warning("%s", watch.message(last, "CLIP Set Last Layer before CatVersion Apply"))
        watch.warned.add(last)
    return patched


def final_layer_clone(clip):
    """A clone of ``clip`` that encodes at the text encoder's final layer, as the authors train, whatever
    CLIP Set Last Layer set on ``clip`` (which keeps its setting)."""
    clone = clip.clone()
    if getattr(clone, "layer_idx", None) is not None:
        if callable(getattr(clone, "clip_layer", None)):
            clone.clip_layer(None)  # ComfyUI's own reset: no layer option is passed to the encoder
        else:
            clone.layer_idx = None
    return clone


def normalized_last_layer(layer_idx) -> int:
    """The 0-based index of the last text layer whose output ComfyUI keeps for a CLIP Set Last Layer
    value (None or -1: 11, the final one; -2: 10; ...; values beyond the 12 layers: the final one)."""
    if layer_idx is None or abs(layer_idx) > NUM_TEXT_LAYERS:
        return NUM_TEXT_LAYERS - 1
    return layer_idx % NUM_TEXT_LAYERS if layer_idx < 0 else layer_idx


def clip_last_layer(clip) -> int:
    """The 0-based index of the last text layer the CLIP runs (11 unless CLIP Set Last Layer cut it)."""
    return normalized_last_layer(getattr(clip, "layer_idx", None))


def encoder_last_layer(text_model) -> int:
    """The last text layer whose output the encode in progress keeps, from the options ComfyUI set on
    the text encoder (``SDClipModel.layer`` / ``layer_idx``) for it."""
    layer = getattr(text_model, "layer", "last")
    if layer == "hidden":
        return normalized_last_layer(getattr(text_model, "layer_idx", None))
    if isinstance(layer, (list, tuple)) and layer:  # several layers' outputs kept: the deepest one counts
        return max(normalized_last_layer(i) for i in layer)
    return NUM_TEXT_LAYERS - 1  # "last", "all"


class LayerCutWatch:
    """Shared by the layers one CatVersion Apply prefixed: at each encode it reads where the text
    encoder stops, and warns (once per last layer) when prefixed layers lie beyond it, which is how a
    CLIP Set Last Layer after CatVersion Apply shows."""

    def __init__(self, text_model, layers, names: list[str]):
        self.text_model = text_model
        self.layers, self.names = sorted(layers), list(names)
        self.warned: set[int] = set()

    def cut(self, last: int) -> list[int]:
        return [layer for layer in self.layers if layer > last]

    def message(self, last: int, where: str) -> str:
        return (f"CatVersion ({', '.join(self.names)}): the CLIP stops at layer {last - NUM_TEXT_LAYERS} ({where}), so "
                f"the adapter's layers after the cut are not used: the prefixes of layers {self.cut(last)} have no "
                "effect. The adapter was trained with the last layer (-1): set CLIP Set Last Layer to -1 or leave it out.")

    def check(self) -> None:
        last = encoder_last_layer(self.text_model)
        if last not in self.warned and self.cut(last):
            self.warned.add(last)
            log.warning("%s", self.message(last, "CLIP Set Last Layer after CatVersion Apply, seen as the prompt was encoded"))
