"""The one module of elite_core that talks to ComfyUI.

It registers the ``models/elite`` folder, wraps mappers for ComfyUI's memory manager, runs the
CLIP_VISION model, edits CLIP token lists and patches the SD1.x ModelPatcher. Everything else in
elite_core is plain torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import folder_paths

from .checkpoint import MAPPER_EXTENSIONS, load_mapper_state_dict
from .clip_input import describe_vision_mismatch, select_elite_layers, squash_to_clip_input
from .concept import ELITEConcept
from .mappers import GlobalMapper, MapperWidths, build_mapper
from .prompt_tokens import PlaceholderError, PlaceholderMissing, inject_words, placeholder_token_id
from .sites import SD1_ATTN2_SITES

log = logging.getLogger("elite")

MODEL_FOLDER = "elite"
SD1_TEXT_WIDTH = 768


class ELITEInputError(ValueError):
    """A node input that ELITE cannot use; the message says what was expected."""


# --------------------------------------------------------------------------- model folder


def register_model_folder() -> None:
    """Register ``models/elite`` (plus any ``elite:`` paths from extra_model_paths.yaml)."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    folder_paths.add_model_folder_path(MODEL_FOLDER, default, is_default=True)
    paths = folder_paths.folder_names_and_paths[MODEL_FOLDER][0]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(MAPPER_EXTENSIONS))


def mapper_file_names() -> list[str]:
    return folder_paths.get_filename_list(MODEL_FOLDER)


def resolve_mapper_path(name: str) -> str:
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        folders = folder_paths.get_folder_paths(MODEL_FOLDER)
        seen = mapper_file_names()
        raise ELITEInputError(
            f"ELITE mapper '{name}' was not found. Searched: {', '.join(folders) or '(no folders)'}. "
            f"Files there: {', '.join(seen) if seen else 'none'}. Put global_mapper.pt (or its "
            f".safetensors conversion) into models/{MODEL_FOLDER}/."
        )
    return path


# --------------------------------------------------------------------------- mappers


@dataclass(frozen=True, eq=False)
class LoadedMapper:
    """A mapper module wrapped for ComfyUI's memory manager, plus CPU copies of its K/V weights."""

    name: str
    module: torch.nn.Module
    patcher: comfy.model_patcher.ModelPatcher
    widths: MapperWidths
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]]


def load_global_mapper(name: str) -> LoadedMapper:
    path = resolve_mapper_path(name)
    state_dict, widths = load_mapper_state_dict(path)
    module = build_mapper(GlobalMapper, state_dict, widths)
    kv = {
        site.ckpt_prefix: (state_dict[site.ckpt_to_k].clone(), state_dict[site.ckpt_to_v].clone())
        for site in SD1_ATTN2_SITES
    }
    patcher = comfy.model_patcher.ModelPatcher(
        module,
        load_device=model_management.get_torch_device(),
        offload_device=model_management.unet_offload_device(),
    )
    log.info("loaded ELITE global mapper %s (%d -> %d)", name, widths.input_dim, widths.output_dim)
    return LoadedMapper(name=name, module=module, patcher=patcher, widths=widths, kv=kv)


def _run_mapper(mapper: LoadedMapper, features: list[torch.Tensor]) -> torch.Tensor:
    model_management.load_models_gpu([mapper.patcher])
    param = next(mapper.module.parameters())
    with torch.no_grad():
        out = mapper.module([f.to(param.device, param.dtype) for f in features])
    return out.to(model_management.intermediate_device(), torch.float32)


# --------------------------------------------------------------------------- CLIP vision


def _vision_geometry(clip_vision) -> tuple[int, int, int]:
    try:
        vision = clip_vision.model.vision_model
        num_layers = len(vision.encoder.layers)
        num_tokens, width = vision.embeddings.position_embedding.weight.shape
    except AttributeError as exc:
        raise ELITEInputError(
            "This CLIP_VISION model is not a CLIP vision transformer; ELITE needs CLIP ViT-L/14 "
            "(e.g. clip-vit-large-patch14 model.safetensors in models/clip_vision)."
        ) from exc
    return num_layers, num_tokens, width


def clip_vision_features(clip_vision, image: torch.Tensor, mapper_width: int) -> list[torch.Tensor]:
    """ELITE's five CLIP layers (blocks 24, 4, 8, 12, 16) of IMAGE, each (B, 257, width)."""
    problem = describe_vision_mismatch(*_vision_geometry(clip_vision), mapper_width=mapper_width)
    if problem:
        raise ELITEInputError(problem)
    pixels = squash_to_clip_input(image)
    model_management.load_models_gpu([clip_vision.patcher])
    with torch.no_grad():
        _, all_hidden, _, _ = clip_vision.model(
            pixel_values=pixels.to(clip_vision.load_device), intermediate_output="all"
        )
    return [layer.float() for layer in select_elite_layers(all_hidden)]


def encode_concept(clip_vision, global_mapper: LoadedMapper, image: torch.Tensor) -> ELITEConcept:
    if image.dim() != 4 or image.shape[0] == 0:
        raise ELITEInputError(f"ELITE needs an IMAGE batch (batch, height, width, 3), got {tuple(image.shape)}.")
    features = clip_vision_features(clip_vision, image, global_mapper.widths.input_dim)
    words = _run_mapper(global_mapper, features)
    return ELITEConcept(words=words, global_kv=global_mapper.kv)


# --------------------------------------------------------------------------- text conditioning


def concept_conditioning(clip, concept: ELITEConcept, text: str, placeholder: str, all_words: bool):
    """CONDITIONING for ``text`` with the concept's word(s) at the placeholder token."""
    placeholder = placeholder.strip()
    if not placeholder or any(c in placeholder for c in " ()[]:\\"):
        raise ELITEInputError(
            f"The placeholder '{placeholder}' must be a single word without spaces, brackets or colons (e.g. S)."
        )
    tokens = clip.tokenize(text)
    if set(tokens.keys()) != {"l"}:
        raise ELITEInputError(
            f"This CLIP has text encoders {sorted(tokens.keys())}; ELITE works with Stable Diffusion 1.x "
            "(one CLIP ViT-L text encoder). Load an SD1.x checkpoint."
        )
    if concept.text_width != SD1_TEXT_WIDTH:
        raise ELITEInputError(
            f"The concept's words are {concept.text_width} wide; SD1.x CLIP needs {SD1_TEXT_WIDTH}. "
            "The ELITE mapper file does not match SD1.x."
        )
    try:
        token_id = placeholder_token_id(clip.tokenize(placeholder)["l"][0], placeholder)
        rows, injection = inject_words(tokens["l"], token_id, concept.prompt_words(all_words))
    except PlaceholderMissing:
        raise ELITEInputError(
            f"The prompt has no placeholder '{placeholder}'. Write it as its own word where the "
            f"concept goes, e.g. 'a photo of {placeholder} on the beach'."
        ) from None
    except PlaceholderError as exc:
        raise ELITEInputError(str(exc)) from None
    tokens["l"] = rows
    log.debug("ELITE words injected at token positions %s", injection.positions)
    return clip.encode_from_tokens_scheduled(tokens), injection


# --------------------------------------------------------------------------- UNet


def _attn2_kv_problems(model, concept: ELITEConcept) -> list[str]:
    state = model.model_state_dict()
    problems = []
    for site in SD1_ATTN2_SITES:
        wk, wv = concept.global_kv[site.ckpt_prefix]
        for key, w in ((site.comfy_to_k, wk), (site.comfy_to_v, wv)):
            if key not in state:
                problems.append(f"{key} is missing")
            elif tuple(state[key].shape) != tuple(w.shape):
                problems.append(f"{key} is {tuple(state[key].shape)}, ELITE's is {tuple(w.shape)}")
    return problems


def apply_global_kv(model, concept: ELITEConcept):
    """A clone of ``model`` whose 16 attn2 to_k/to_v weights are ELITE's (weight patches)."""
    problems = _attn2_kv_problems(model, concept)
    if problems:
        kind = type(getattr(model.model, "model_config", model.model)).__name__
        raise ELITEInputError(
            f"This MODEL ({kind}) is not a Stable Diffusion 1.x UNet that ELITE can patch: "
            f"{len(problems)} of 32 cross-attention K/V weights do not match ({problems[0]}). "
            "Use an SD1.x checkpoint (v1-4, v1-5 or a fine-tune of them)."
        )
    patched = model.clone()
    patches = {}
    for site in SD1_ATTN2_SITES:
        wk, wv = concept.global_kv[site.ckpt_prefix]
        patches[site.comfy_to_k] = ("set", (wk,))
        patches[site.comfy_to_v] = ("set", (wv,))
    added = patched.add_patches(patches, 1.0, 1.0)
    if len(added) != 2 * len(SD1_ATTN2_SITES):
        raise RuntimeError(f"ELITE patched {len(added)} of {2 * len(SD1_ATTN2_SITES)} attn2 K/V weights.")
    return patched
