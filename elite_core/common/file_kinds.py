"""What a model file is, from its tensor names and shapes alone, said in an artist's words.

Artists put files in the wrong folder: a LoRA in ``models/elite``, an embedding in
``models/catversion``, an IP-Adapter's CLIP vision model where ELITE needs ViT-L/14. Every loader
of the pack asks :func:`recognise` what a refused file is, and :func:`refusal` turns the answer into
one message: the file, what it is, where it belongs and which node loads it, then what the loader
needed and where that file goes.

Pure: names and shapes in (a safetensors header is read without its tensors, see
:func:`safetensors_shapes`; a torch pickle the loader already read goes through
:func:`tensor_shapes`), a :class:`FileKind` out. No ComfyUI, no other module of the pack.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

Shapes = Mapping[str, tuple[int, ...]]

# The files the README's model table names (the templates use the same names).
ELITE_CLIP_VISION_FILE = "clip-vit-large-patch14.safetensors"
SD1_CHECKPOINT_FILE = "v1-5-pruned-emaonly-fp16.safetensors"
_NEEDS_SD1 = f"ELITE and CatVersion need a Stable Diffusion 1.x checkpoint (e.g. {SD1_CHECKPOINT_FILE})."

# What the pack's own writers record (elite.checkpoint, elite.concept_store, catversion.prefix; the
# tests write each with its real writer and check that it is recognised).
_ELITE_KIND_KEY = "elite_kind"
_CONCEPT_FORMAT = "elite-concept"
_CATVERSION_FORMAT = "catversion-prefix-v1"
_EXPORTED_EMBEDDING_SOURCE = "ELITE concept "

# FileKind.key of the pack's own files
ELITE_MAPPERS = ("elite_mapper", "elite_global_mapper", "elite_local_mapper")
ELITE_CONCEPT = "elite_concept"
CATVERSION_ADAPTER = "catversion"


@dataclass(frozen=True)
class FileKind:
    """``key``: a stable name for code and tests (e.g. "lora", "checkpoint"); ``what``: the file in
    words, with an article ("a LoRA for SDXL"); ``advice``: where it belongs and which node loads it,
    whole sentences ("{stem}" stands for the file's name without its extension)."""

    key: str
    what: str
    advice: str

    def sentence(self, file_name: str) -> str:
        """"it is <what>. <advice>" for ``file_name``."""
        stem = os.path.splitext(os.path.basename(file_name))[0]
        return f"it is {self.what}. {self.advice.format(stem=stem)}"


def refusal(file_name: str, kind: FileKind, expected: str, needed: str) -> str:
    """The message of a loader that got ``kind`` where it reads ``expected`` (with its article, e.g.
    "an ELITE mapper"); ``needed`` says, as a sentence, which file the loader reads and from where."""
    return f"'{os.path.basename(file_name)}' is not {expected}: {kind.sentence(file_name)} {needed}"


def refuse_other_kinds(file_name: str, shapes: Shapes, metadata: Mapping[str, str] | None, accepted: Collection[str],
                       expected: str, needed: str, error: type[Exception]) -> None:
    """Raise ``error`` with :func:`refusal`'s words when the file is recognisably a kind not in
    ``accepted`` (a LoRA, an embedding, a checkpoint...); return when it is unknown or accepted."""
    found = recognise(shapes, metadata)
    if found is not None and found.key not in accepted:
        raise error(refusal(file_name, found, expected, needed))


# --------------------------------------------------------------------------- reading names and shapes


def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """The tensors' names and shapes from a safetensors header, without reading any tensor. For a
    file whose header :func:`~.files.safetensors_metadata` has already checked."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}


def tensor_shapes(obj) -> dict[str, tuple[int, ...]]:
    """The tensors of what a weights-only ``torch.load`` returned, flattened to dotted names: nested
    dicts (an A1111 embedding's ``string_to_param``, an IP-Adapter's ``image_proj`` / ``ip_adapter``)
    and a ``state_dict`` wrapper (.ckpt) are opened, anything that is not a tensor is left out."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    shapes: dict[str, tuple[int, ...]] = {}

    def walk(value, prefix: str) -> None:
        if isinstance(value, torch.Tensor):
            shapes[prefix] = tuple(value.shape)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))

    if isinstance(obj, dict):
        walk(obj, "")
    return shapes


# --------------------------------------------------------------------------- families

_FAMILY_BY_CONTEXT = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "SDXL", 1280: "SDXL (refiner)"}
_LORA_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "lora_A.default.weight")


def _context_width(shapes: Shapes, suffixes=("attn2.to_k.weight",)) -> int | None:
    """The text width a UNet's cross-attention reads (its first attn2 to_k weight's input width)."""
    for key, shape in shapes.items():
        if key.endswith(suffixes) and len(shape) == 2:
            return shape[1]
    return None


def _family(context: int | None) -> str | None:
    return _FAMILY_BY_CONTEXT.get(context) if context else None


def _for(family: str | None) -> str:
    return f" for {family}" if family else ""


def _sd1_note(family: str | None) -> str:
    return "" if family in (None, "Stable Diffusion 1.x") else " " + _NEEDS_SD1


# --------------------------------------------------------------------------- CLIP vision sizes

# (transformer layers, tokens, width) -> name, and who uses it
_CLIP_VISION_SIZES = {
    (24, 257, 1024): ("ViT-L/14", "at 224 px: the one ELITE needs"),
    (24, 577, 1024): ("ViT-L/14 at 336 px", "a larger input than ELITE's 224 px"),
    (32, 257, 1280): ("ViT-H/14", "the one IP-Adapter uses"),
    (48, 257, 1664): ("ViT-bigG/14", "the one IP-Adapter's SDXL models use"),
    (12, 50, 768): ("ViT-B/32", "a small CLIP; ELITE Score reads it from models/elite_eval"),
    (12, 197, 768): ("ViT-B/16", "a small CLIP"),
    (27, 729, 1152): ("SigLIP so400m at 384 px", "the one Flux Redux uses"),
    (27, 1024, 1152): ("SigLIP so400m at 512 px", "SigLIP, not OpenAI's CLIP"),
}
ELITE_CLIP_VISION_SIZE = (24, 257, 1024)


def clip_vision_size(num_layers: int, num_tokens: int, width: int) -> str:
    """A CLIP vision model's size in words, e.g. "ViT-H/14 (32 layers, 1280 wide; the one IP-Adapter uses)"."""
    numbers = f"{num_layers} layers, {width} wide"
    known = _CLIP_VISION_SIZES.get((num_layers, num_tokens, width))
    if known is None:
        return f"of a size ELITE does not use ({numbers}, {num_tokens} tokens)"
    name, note = known
    return f"{name} ({numbers}; {note})"


def _clip_vision(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    if not any(k.startswith(("vision_model.encoder.layers.", "visual.transformer.resblocks.")) for k in shapes):
        return None
    layers = {int(m.group(2)) for key in shapes
              for m in [re.match(r"(vision_model\.encoder\.layers|visual\.transformer\.resblocks)\.(\d+)\.", key)] if m}
    position = shapes.get("vision_model.embeddings.position_embedding.weight") or shapes.get("visual.positional_embedding")
    size = (len(layers), *position) if position is not None and len(position) == 2 else None
    if size == ELITE_CLIP_VISION_SIZE:
        advice = ("It belongs in models/clip_vision: load it with Load CLIP Vision and connect it to ELITE Encoder's "
                  "clip_vision input.")
    else:
        advice = (f"It belongs in models/clip_vision, for the nodes that use it (Load CLIP Vision). ELITE Encoder "
                  f"needs CLIP ViT-L/14 ({ELITE_CLIP_VISION_FILE}).")
    what = "a CLIP vision model" + (f", {clip_vision_size(*size)}" if size else "")
    return FileKind("clip_vision", what, advice)


# --------------------------------------------------------------------------- the kinds

_LORA_KEY = re.compile(
    r"^lora_(unet|te\d?)_|[._]lora_(down|up|mid|A|B)\.|[._]lora\.(down|up)\.|\.(hada|lokr)_w|\.alpha$|\.dora_scale$"
)


def _lora(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    keys = list(shapes)
    if sum(bool(_LORA_KEY.search(key)) for key in keys) * 2 < len(keys):
        return None
    if any("double_blocks" in key or "single_blocks" in key or "single_transformer_blocks" in key for key in keys):
        family = "Flux"
    elif any(key.startswith(("lora_te2_", "lora_te1_")) or "text_encoder_2" in key for key in keys):
        family = "SDXL"
    else:
        family = _family(next((shape[-1] for key, shape in shapes.items()
                               if "attn2" in key and "to_k" in key and key.endswith(_LORA_DOWN) and len(shape) == 2),
                              None))
    return FileKind("lora", "a LoRA" + _for(family),
                    "It belongs in models/loras: load it with Load LoRA (after ELITE Attention Patch when you use "
                    "ELITE)." + _sd1_note(family))


_EMBEDDING_WIDTHS = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 1280: "SDXL"}


def _embedding(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    named = any(key in ("emb_params", "clip_l", "clip_g") or key.startswith("string_to_param.") for key in shapes)
    small = (0 < len(shapes) <= 2 and all(
        (len(s) == 1 or (len(s) == 2 and s[0] <= 75)) and s[-1] in _EMBEDDING_WIDTHS for s in shapes.values()))
    if not (named or small) or any(len(s) > 2 for s in shapes.values()):
        return None
    family = "SDXL" if "clip_g" in shapes else _EMBEDDING_WIDTHS.get(next(iter(shapes.values()))[-1])
    advice = "It belongs in models/embeddings: write embedding:{stem} in your prompt (CLIP Text Encode)."
    source = metadata.get("source", "")
    if source.startswith(_EXPORTED_EMBEDDING_SOURCE):
        concept = source[len(_EXPORTED_EMBEDDING_SOURCE):]
        return FileKind("embedding", "the textual-inversion embedding ELITE Save Concept exported from a concept",
                        advice + f" The concept itself is {concept} in models/elite_concepts, for ELITE Load Concept.")
    return FileKind("embedding", "a textual-inversion embedding" + _for(family), advice + _sd1_note(family))


def _elite_mapper(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    if "mapping_0.0.weight" not in shapes or not any(key.endswith("_attn2_to_k.weight") for key in shapes):
        return None
    kind = metadata.get(_ELITE_KIND_KEY)
    if kind in ("global", "local"):
        return FileKind(f"elite_{kind}_mapper", f"an ELITE {kind} mapper",
                        f"It belongs in models/elite: load it with ELITE {kind.capitalize()} Mapper Loader.")
    return FileKind("elite_mapper", "an ELITE mapper",
                    "It belongs in models/elite: load global_mapper.pt with ELITE Global Mapper Loader and "
                    "local_mapper.pt with ELITE Local Mapper Loader.")


def _elite_concept(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    words = shapes.get("words")
    if metadata.get("format") != _CONCEPT_FORMAT and not (
            words is not None and len(words) == 3 and words[1] == 5 and set(shapes) <= {"words", "local_tokens", "preview"}):
        return None
    return FileKind(ELITE_CONCEPT, "a saved ELITE concept",
                    "It belongs in models/elite_concepts: load it with ELITE Load Concept, with the mapper files it "
                    "was made with.")


def _catversion(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    if metadata.get("format") != _CATVERSION_FORMAT and not any(
            key.endswith(("clip_text_model_self_prefix.control_trans", ".self_attn.prefix_key")) for key in shapes):
        return None
    return FileKind(CATVERSION_ADAPTER, "a CatVersion adapter",
                    "It belongs in models/catversion: load it with CatVersion Adapter Loader and connect it to "
                    "CatVersion Apply.")


def _ip_adapter(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    if not any(key.startswith("ip_adapter.") for key in shapes) or not any(key.startswith("image_proj.") for key in shapes):
        return None
    family = _family(_context_width(shapes, ("to_k_ip.weight",)))
    return FileKind("ip_adapter", "an IP-Adapter model" + _for(family),
                    "It belongs in models/ipadapter, for the IPAdapter nodes (ComfyUI_IPAdapter_plus).")


def _controlnet(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    keys = list(shapes)
    if not (any(k.startswith(("control_model.", "controlnet_cond_embedding.", "controlnet_down_blocks.")) for k in keys)
            or (any(k.startswith("input_hint_block.") for k in keys) and any(k.startswith("zero_convs.") for k in keys))):
        return None
    family = _family(_context_width(shapes))
    return FileKind("controlnet", "a ControlNet" + _for(family),
                    "It belongs in models/controlnet: load it with Load ControlNet Model and use it with Apply "
                    "ControlNet." + _sd1_note(family))


def _checkpoint(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    keys = list(shapes)
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        return None
    if any(k.startswith("model.diffusion_model.double_blocks.") for k in keys):
        family = "Flux"
    elif any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys):
        family = "Stable Diffusion 3"
    elif any(k.startswith(("conditioner.embedders.", "model.diffusion_model.label_emb.")) for k in keys):
        family = "SDXL"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        family = "Stable Diffusion 2.x"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        family = "Stable Diffusion 1.x"
    else:
        family = _family(_context_width(shapes))
    what = {None: "a Stable Diffusion checkpoint", "SDXL": "an SDXL checkpoint", "SDXL (refiner)": "an SDXL refiner "
            "checkpoint", "Flux": "a Flux checkpoint"}.get(family, f"a {family} checkpoint")
    return FileKind("checkpoint", what, "It belongs in models/checkpoints: load it with Load Checkpoint."
                    + _sd1_note(family))


def _diffusion_model(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    keys = set(shapes)
    starts = {k.split(".")[0] for k in keys}
    if {"double_blocks", "single_blocks"} <= starts:
        family = "Flux"
    elif "joint_blocks" in starts:
        family = "Stable Diffusion 3"
    elif {"input_blocks", "middle_block"} <= starts or {"conv_in.weight", "time_embedding.linear_1.weight"} <= keys:
        family = _family(_context_width(shapes))
    else:
        return None
    return FileKind("diffusion_model", "a diffusion model (a UNet without its text encoder and VAE)" + _for(family),
                    "It belongs in models/diffusion_models: load it with Load Diffusion Model." + _sd1_note(family))


def _vae(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    for prefix in ("", "first_stage_model.", "vae."):
        if {f"{prefix}encoder.conv_in.weight", f"{prefix}decoder.conv_in.weight"} <= set(shapes):
            return FileKind("vae", "a VAE", "It belongs in models/vae: load it with Load VAE.")
    return None


_TEXT_ENCODERS = {768: "CLIP-L (the text encoder of Stable Diffusion 1.x)", 1024: "OpenCLIP ViT-H (Stable Diffusion 2.x's)",
                  1280: "CLIP-G (SDXL's second text encoder)"}


def _text_encoder(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    advice = "It belongs in models/text_encoders: load it with Load CLIP."
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in shapes:
        return FileKind("text_encoder", "a T5 text encoder", advice)
    if not any(k.startswith("text_model.encoder.layers.") for k in shapes):
        return None
    embedding = (shapes.get("text_model.embeddings.position_embedding.weight")
                 or shapes.get("text_model.embeddings.token_embedding.weight"))
    name = _TEXT_ENCODERS.get(embedding[-1]) if embedding else None
    return FileKind("text_encoder", "a CLIP text encoder" + (f", {name}" if name else ""), advice)


def _upscaler(shapes: Shapes, metadata: Mapping[str, str]) -> FileKind | None:
    keys = list(shapes)
    if not ("conv_first.weight" in shapes or any(".RDB1." in k or "RRDB_trunk." in k or ".rdb1." in k for k in keys)):
        return None
    return FileKind("upscaler", "an upscale model",
                    "It belongs in models/upscale_models: load it with Load Upscale Model and use it with Upscale "
                    "Image (using Model).")


def _strip_module_prefix(shapes: Shapes) -> Shapes:
    # saved from a DistributedDataParallel wrapper
    if shapes and all(k.startswith("module.") for k in shapes):
        return {k[len("module."):]: v for k, v in shapes.items()}
    return shapes


# the pack's own files first, then the files people mix up; a small embedding last (it is told by its
# few narrow tensors, which the others never are)
_CHECKS = (_elite_mapper, _elite_concept, _catversion, _lora, _ip_adapter, _controlnet, _checkpoint,
           _diffusion_model, _vae, _clip_vision, _text_encoder, _upscaler, _embedding)


def recognise(shapes: Shapes, metadata: Mapping[str, str] | None = None) -> FileKind | None:
    """What the file with these tensors (name -> shape) and safetensors metadata is, or None when it
    is none of the kinds the pack knows."""
    shapes = _strip_module_prefix(shapes)
    metadata = metadata or {}
    if not shapes:
        return None
    for check in _CHECKS:
        kind = check(shapes, metadata)
        if kind is not None:
            return kind
    return None


__all__ = [
    "CATVERSION_ADAPTER",
    "ELITE_CONCEPT",
    "ELITE_MAPPERS",
    "ELITE_CLIP_VISION_FILE",
    "ELITE_CLIP_VISION_SIZE",
    "SD1_CHECKPOINT_FILE",
    "FileKind",
    "clip_vision_size",
    "recognise",
    "refusal",
    "safetensors_shapes",
    "tensor_shapes",
]
