"""The one module of elite_core that talks to ComfyUI.

It registers the ``models/elite`` folder, wraps mappers for ComfyUI's memory manager, runs the
CLIP_VISION model, edits CLIP token lists and patches the SD1.x ModelPatcher. Everything else in
elite_core is plain torch.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import folder_paths
from comfy.ldm.modules.attention import optimized_attention

from .attn2_patches import ELITEAttn2Replace, PlaceholderProbe
from .checkpoint import MAPPER_EXTENSIONS, load_mapper_state_dict
from .clip_input import (
    describe_vision_mismatch,
    mask_patch_grid,
    object_image,
    prepare_object_mask,
    select_elite_layers,
    squash_to_clip_input,
)
from .concept import ELITEConcept, LocalBranch
from .mappers import GlobalMapper, LocalMapper, MapperWidths, SiteKV, build_mapper, kv_from_state_dict
from .prompt_tokens import PlaceholderError, PlaceholderMissing, inject_words, placeholder_token_id
from .sites import SD1_ATTN2_SITES

log = logging.getLogger("elite")

MODEL_FOLDER = "elite"
SD1_TEXT_WIDTH = 768
PLACEHOLDER_KEY = "elite_placeholder"  # conditioning dict entry: the placeholder's encoded vector(s)


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


def _managed(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(
        module,
        load_device=model_management.get_torch_device(),
        offload_device=model_management.unet_offload_device(),
    )


@dataclass(frozen=True, eq=False)
class LoadedMapper:
    """A mapper's MLPs wrapped for ComfyUI's memory manager, plus its per-site K/V weights.

    The global mapper's K/V stay CPU tensors (they become weight patches); the local mapper's are
    a :class:`SiteKV` module with its own patcher, loaded next to the UNet while sampling.
    """

    name: str
    module: torch.nn.Module
    patcher: comfy.model_patcher.ModelPatcher
    widths: MapperWidths
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]]
    kv_patcher: comfy.model_patcher.ModelPatcher | None = None


def _load_mapper(name: str, kind: type) -> tuple[torch.nn.Module, MapperWidths, dict]:
    state_dict, widths = load_mapper_state_dict(resolve_mapper_path(name))
    module = build_mapper(kind, state_dict, widths, with_kv=False)
    log.info("loaded ELITE %s %s (%d -> %d)", kind.__name__, name, widths.input_dim, widths.output_dim)
    return module, widths, kv_from_state_dict(state_dict)


def load_global_mapper(name: str) -> LoadedMapper:
    module, widths, kv = _load_mapper(name, GlobalMapper)
    return LoadedMapper(name=name, module=module, patcher=_managed(module), widths=widths, kv=kv)


def load_local_mapper(name: str) -> LoadedMapper:
    module, widths, kv = _load_mapper(name, LocalMapper)
    kv_module = SiteKV(kv)
    return LoadedMapper(
        name=name, module=module, patcher=_managed(module), widths=widths,
        kv=kv_module.weights(), kv_patcher=_managed(kv_module),
    )


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
        # (last, intermediate, projected, ...): index 1 holds all block outputs (B, 24, 257, width).
        outputs = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output="all")
    return [layer.float() for layer in select_elite_layers(outputs[1])]


def _check_mask_coverage(mask: torch.Tensor, inverted: bool) -> None:
    """Log a hint when the object mask is (almost) full or empty: usually a polarity mistake."""
    coverage = mask.mean().item()
    if 0.005 <= coverage <= 0.97:
        return
    full = coverage > 0.97
    effect = "so the local mapping sees the background too" if full else "so the local mapping has next to no effect"
    if not inverted:
        hint = "a MASK from Load Image is 1 on transparent pixels, so turn on invert_mask for it"
    elif full:
        hint = ("Load Image gives an empty MASK for an image without transparency: use a cut-out PNG "
                "or paint the object in the mask editor")
    else:
        hint = "invert_mask is on: turn it off if your mask is already 1 on the object"
    log.warning("ELITE: the object mask covers %.1f%% of the image, %s. The mask must be 1 on the object; %s.",
                100 * coverage, effect, hint)


def encode_local_tokens(clip_vision, local_mapper: LoadedMapper, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ELITE's local tokens (B, 256, D): the object image through CLIP and the local mapper, with
    background patches zeroed by the 16x16 nearest mask (reference §2 and §5)."""
    features = clip_vision_features(clip_vision, object_image(image, mask), local_mapper.widths.input_dim)
    return _run_mapper(local_mapper, features) * mask_patch_grid(mask)


def encode_concept(clip_vision, global_mapper: LoadedMapper, image: torch.Tensor,
                   local_mapper: LoadedMapper | None = None, mask: torch.Tensor | None = None,
                   invert_mask: bool = False) -> ELITEConcept:
    if image.dim() != 4 or image.shape[0] == 0:
        raise ELITEInputError(f"ELITE needs an IMAGE batch (batch, height, width, 3), got {tuple(image.shape)}.")
    features = clip_vision_features(clip_vision, image, global_mapper.widths.input_dim)
    words = _run_mapper(global_mapper, features)
    if local_mapper is None:
        if mask is not None:
            log.warning("ELITE: the mask only shapes the local mapping; connect a local mapper to use it.")
        return ELITEConcept(words=words, global_kv=global_mapper.kv)
    if local_mapper.widths.output_dim != global_mapper.widths.output_dim:
        raise ELITEInputError("The local and global mappers have different output widths; they are not a pair.")
    try:
        object_mask = prepare_object_mask(mask, image, invert_mask)
    except ValueError as exc:
        raise ELITEInputError(str(exc)) from None
    if mask is not None:
        _check_mask_coverage(object_mask, invert_mask)
    tokens = encode_local_tokens(clip_vision, local_mapper, image, object_mask)
    local = LocalBranch(tokens=tokens, kv=local_mapper.kv_patcher.model.weights, models=(local_mapper.kv_patcher,))
    return ELITEConcept(words=words, global_kv=global_mapper.kv, local=local)


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
    conditioning = clip.encode_from_tokens_scheduled(tokens)
    # The placeholder's encoded vector identifies it later inside the UNet's context, wherever
    # conditioning nodes move it (see PlaceholderProbe).
    marked = []
    for cond, extras in conditioning:
        fingerprint = cond[:1, injection.index].detach().float().cpu()
        marked.append([cond, {**extras, PLACEHOLDER_KEY: fingerprint}])
    return marked, injection


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


def _set_global_kv(patched, concept: ELITEConcept) -> None:
    problems = _attn2_kv_problems(patched, concept)
    if problems:
        kind = type(getattr(patched.model, "model_config", patched.model)).__name__
        raise ELITEInputError(
            f"This MODEL ({kind}) is not a Stable Diffusion 1.x UNet that ELITE can patch: "
            f"{len(problems)} of 32 cross-attention K/V weights do not match ({problems[0]}). "
            "Use an SD1.x checkpoint (v1-4, v1-5 or a fine-tune of them)."
        )
    patches = {}
    for site in SD1_ATTN2_SITES:
        wk, wv = concept.global_kv[site.ckpt_prefix]
        patches[site.comfy_to_k] = ("set", (wk,))
        patches[site.comfy_to_v] = ("set", (wv,))
    added = patched.add_patches(patches, 1.0, 1.0)
    if len(added) != 2 * len(SD1_ATTN2_SITES):
        raise RuntimeError(f"ELITE patched {len(added)} of {2 * len(SD1_ATTN2_SITES)} attn2 K/V weights.")


def apply_global_kv(model, concept: ELITEConcept):
    """A clone of ``model`` whose 16 attn2 to_k/to_v weights are ELITE's (weight patches)."""
    patched = model.clone()
    _set_global_kv(patched, concept)
    return patched


def placeholder_fingerprints(positive) -> torch.Tensor | None:
    """The placeholder vectors ELITE Conditioning stored in a CONDITIONING, (m, D), or None."""
    found = [extras[PLACEHOLDER_KEY] for _, extras in positive or [] if PLACEHOLDER_KEY in extras]
    return torch.cat(found) if found else None


def _existing_attn2_replace(model, block: tuple[str, int]):
    replaces = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    found = replaces.get((block[0], block[1], 0))
    return found if found is not None else replaces.get(block)


def add_local_attention(patched, concept: ELITEConcept, positive, strength: float,
                        start_percent: float, end_percent: float) -> None:
    """Install ELITE's local branch on all 16 attn2 sites of ``patched`` (already a clone)."""
    fingerprints = placeholder_fingerprints(positive)
    if fingerprints is None:
        raise ELITEInputError(
            "The local mapping needs the positive prompt from ELITE Conditioning (it finds the "
            "placeholder word there). Connect ELITE Conditioning's output to 'positive'."
        )
    sampling = patched.get_model_object("model_sampling")
    sigma_start = sampling.percent_to_sigma(start_percent)
    sigma_end = sampling.percent_to_sigma(end_percent)
    key = f"elite_selection_{uuid.uuid4().hex}"
    patched.set_model_attn2_patch(PlaceholderProbe(key, fingerprints, models=concept.local.models))
    tokens = concept.local_tokens()
    kv = concept.local.kv
    for site in SD1_ATTN2_SITES:
        replace = ELITEAttn2Replace(
            key, tokens,
            weight_k=lambda p=site.ckpt_prefix: kv()[p][0],
            weight_v=lambda p=site.ckpt_prefix: kv()[p][1],
            scale=strength, sigma_start=sigma_start, sigma_end=sigma_end,
            attention=optimized_attention, previous=_existing_attn2_replace(patched, site.block),
        )
        patched.set_model_attn2_replace(replace, site.block[0], site.block[1], 0)


def apply_elite(model, concept: ELITEConcept, positive=None, strength: float = 0.8,
                start_percent: float = 0.0, end_percent: float = 1.0, global_kv: bool = True):
    """A clone of ``model`` with ELITE's global K/V weights and, when the concept has a local
    mapping and ``strength`` > 0, the local attention branch."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ELITEInputError(f"start ({start_percent}) and end ({end_percent}) must satisfy 0 <= start <= end <= 1.")
    patched = model.clone()
    if global_kv:
        _set_global_kv(patched, concept)
    else:
        problems = _attn2_kv_problems(patched, concept)
        if problems:
            raise ELITEInputError(f"This MODEL is not a Stable Diffusion 1.x UNet: {problems[0]}.")
    if strength != 0.0 and concept.local is not None:
        add_local_attention(patched, concept, positive, strength, start_percent, end_percent)
    elif strength != 0.0:
        log.info("ELITE: the concept has no local mapping (no local mapper connected); global mapping only.")
    return patched
