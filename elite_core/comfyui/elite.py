"""ELITE on ComfyUI's objects: the ``models/elite`` folder, mapper loaders (wrapped for ComfyUI's
memory manager), the CLIP_VISION features a concept is encoded from, and the text conditioning
with the concept's words in the prompt. The UNet side is :mod:`.elite_patch`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import folder_paths

from ..common.checks import ELITEInputError, check_image, check_mask
from ..common.file_kinds import ELITE_CLIP_VISION_FILE
from ..elite.checkpoint import MAPPER_EXTENSIONS, load_mapper_state_dict
from ..elite.clip_input import (
    describe_vision_mismatch,
    mask_patch_grid,
    object_image,
    prepare_object_mask,
    select_elite_layers,
    squash_to_clip_input,
)
from ..elite.concept import ELITEConcept, LocalBranch
from ..elite.mappers import GlobalMapper, LocalMapper, MapperWidths, SiteKV, build_mapper, kv_from_state_dict
from ..elite.prompt_tokens import PlaceholderError, PlaceholderMissing, inject_words, placeholder_token_id
from ..elite.sites import SD1_TEXT_WIDTH
from .elite_patch import CONCEPT_PLACEHOLDERS_KEY, PLACEHOLDER_KEY
from .folders import missing_file_message, register_folder

log = logging.getLogger("elite")

MODEL_FOLDER = "elite"


# --------------------------------------------------------------------------- model folder


def register_model_folder() -> None:
    """Register ``models/elite`` for the mapper files."""
    register_folder(MODEL_FOLDER, MAPPER_EXTENSIONS)


def mapper_file_names() -> list[str]:
    return folder_paths.get_filename_list(MODEL_FOLDER)


def missing_mapper_message(name, kind: str) -> str | None:
    return missing_file_message(MODEL_FOLDER, name, "ELITE mapper", f"{kind}_mapper.pt (or its .safetensors conversion)")


def resolve_mapper_path(name: str, kind: str) -> str:
    problem = missing_mapper_message(name, kind)
    if problem:
        raise ELITEInputError(problem)
    return folder_paths.get_full_path(MODEL_FOLDER, name)


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


def _load_mapper(name: str, cls: type, kind: str) -> tuple[torch.nn.Module, MapperWidths, dict]:
    state_dict, widths = load_mapper_state_dict(resolve_mapper_path(name, kind), kind=kind)
    module = build_mapper(cls, state_dict, widths, with_kv=False)
    log.info("loaded ELITE %s %s (%d -> %d)", cls.__name__, name, widths.input_dim, widths.output_dim)
    return module, widths, kv_from_state_dict(state_dict)


def load_global_mapper(name: str) -> LoadedMapper:
    module, widths, kv = _load_mapper(name, GlobalMapper, "global")
    return LoadedMapper(name=name, module=module, patcher=_managed(module), widths=widths, kv=kv)


def load_local_mapper(name: str) -> LoadedMapper:
    module, widths, kv = _load_mapper(name, LocalMapper, "local")
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
        found = type(getattr(clip_vision, "model", clip_vision)).__name__
        what = "a DINO image encoder" if "dino" in found.lower() else f"not a CLIP vision transformer ({found})"
        raise ELITEInputError(
            f"This CLIP_VISION model is {what}; ELITE needs CLIP ViT-L/14: load {ELITE_CLIP_VISION_FILE} "
            "(in models/clip_vision; see the README's model table) with Load CLIP Vision."
        ) from exc
    return num_layers, num_tokens, width


def _vision_layers(clip_vision, pixels: torch.Tensor, mapper_width: int) -> list[torch.Tensor]:
    """One CLIP vision forward of normalised pixels (N, 3, 224, 224): ELITE's five layers, each
    (N, 257, width), fp32."""
    problem = describe_vision_mismatch(*_vision_geometry(clip_vision), mapper_width=mapper_width)
    if problem:
        raise ELITEInputError(problem)
    model_management.load_models_gpu([clip_vision.patcher])
    with torch.no_grad():
        # (last, intermediate, projected, ...): index 1 holds all block outputs (N, 24, 257, width).
        outputs = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output="all")
    return [layer.float() for layer in select_elite_layers(outputs[1])]


def clip_vision_features(clip_vision, image: torch.Tensor, mapper_width: int) -> list[torch.Tensor]:
    """ELITE's five CLIP layers (blocks 24, 4, 8, 12, 16) of IMAGE, each (B, 257, width)."""
    return _vision_layers(clip_vision, squash_to_clip_input(image), mapper_width)


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


def _object_mask(image: torch.Tensor, mask: torch.Tensor | None, invert_mask: bool) -> torch.Tensor:
    if mask is not None:
        check_mask(mask)
    try:
        object_mask = prepare_object_mask(mask, image, invert_mask)
    except ValueError as exc:
        raise ELITEInputError(str(exc)) from None
    if mask is not None:
        _check_mask_coverage(object_mask, invert_mask)
    return object_mask


def encode_concept(clip_vision, global_mapper: LoadedMapper, image: torch.Tensor,
                   local_mapper: LoadedMapper | None = None, mask: torch.Tensor | None = None,
                   invert_mask: bool = False) -> ELITEConcept:
    """The concept of IMAGE: the global mapper's words and, with a local mapper, ELITE's local tokens
    (B, 256, D): the object image (image x mask) through CLIP and the local mapper, background
    patches zeroed by the 16x16 nearest mask (docs/reference/elite.md §2 and §5).

    With a local mapper the whole image and the object image go through CLIP vision as one batch.
    """
    check_image(image)
    if local_mapper is None:
        if mask is not None:
            log.warning("ELITE: the mask only shapes the local mapping; connect a local mapper to use it.")
        features = clip_vision_features(clip_vision, image, global_mapper.widths.input_dim)
        return ELITEConcept(words=_run_mapper(global_mapper, features), global_kv=global_mapper.kv,
                            global_name=global_mapper.name)
    if local_mapper.widths.output_dim != global_mapper.widths.output_dim:
        raise ELITEInputError(
            f"The local mapper '{local_mapper.name}' gives {local_mapper.widths.output_dim}-wide tokens and the "
            f"global mapper '{global_mapper.name}' {global_mapper.widths.output_dim}-wide words: they are not a pair."
        )
    if local_mapper.widths.input_dim != global_mapper.widths.input_dim:
        raise ELITEInputError(
            f"The local mapper '{local_mapper.name}' reads {local_mapper.widths.input_dim}-wide CLIP features and "
            f"the global mapper '{global_mapper.name}' {global_mapper.widths.input_dim}-wide: they are not a pair."
        )
    object_mask = _object_mask(image, mask, invert_mask)
    batch = image.shape[0]
    pixels = torch.cat([squash_to_clip_input(image), squash_to_clip_input(object_image(image, object_mask))])
    layers = _vision_layers(clip_vision, pixels, global_mapper.widths.input_dim)
    words = _run_mapper(global_mapper, [layer[:batch] for layer in layers])
    tokens = _run_mapper(local_mapper, [layer[batch:] for layer in layers]) * mask_patch_grid(object_mask)
    local = LocalBranch(tokens=tokens, kv=local_mapper.kv_patcher.model.weights, models=(local_mapper.kv_patcher,),
                        name=local_mapper.name)
    return ELITEConcept(words=words, global_kv=global_mapper.kv, local=local, global_name=global_mapper.name)


# --------------------------------------------------------------------------- text conditioning


def _check_placeholder(placeholder: str) -> str:
    placeholder = placeholder.strip()
    if not placeholder or any(c in placeholder for c in " ()[]:\\"):
        raise ELITEInputError(
            f"The placeholder '{placeholder}' must be a single word without spaces, brackets or colons (e.g. S)."
        )
    return placeholder


def concept_conditioning(clip, concept: ELITEConcept, text: str, placeholder: str, all_words: bool,
                         more: Sequence[tuple[ELITEConcept, str]] = ()):
    """CONDITIONING for ``text`` with the concept's word(s) at the placeholder token; ``more``
    (concept, placeholder) pairs put further concepts' primary words at their own placeholders.

    Returns the conditioning and the first concept's :class:`Injection`. Each concept's placeholder
    vector is stored in the conditioning under the concept's key (ELITE Attention Patch gates that
    concept's local branch by its own placeholder only)."""
    pairs = [(concept, _check_placeholder(placeholder))] + [(c, _check_placeholder(p)) for c, p in more]
    if len({p for _, p in pairs}) != len(pairs):
        raise ELITEInputError(f"Each concept needs its own placeholder word; got {[p for _, p in pairs]}.")
    if more and all_words:
        raise ELITEInputError("With several concepts, each puts its primary word at its placeholder: set words to "
                              "'primary word'.")
    tokens = clip.tokenize(text)
    if set(tokens.keys()) != {"l"}:
        raise ELITEInputError(
            f"This CLIP has text encoders {sorted(tokens.keys())}; ELITE works with Stable Diffusion 1.x "
            "(one CLIP ViT-L text encoder). Load an SD1.x checkpoint."
        )
    injections = []
    for item, word in pairs:
        if item.text_width != SD1_TEXT_WIDTH:
            raise ELITEInputError(
                f"The concept's words are {item.text_width} wide; SD1.x CLIP needs {SD1_TEXT_WIDTH}. "
                "The ELITE mapper file does not match SD1.x."
            )
        try:
            token_id = placeholder_token_id(clip.tokenize(word)["l"][0], word)
            tokens["l"], injection = inject_words(tokens["l"], token_id, item.prompt_words(all_words))
        except PlaceholderMissing:
            raise ELITEInputError(
                f"The prompt has no placeholder '{word}'. Write it as its own word where the "
                f"concept goes, e.g. 'a photo of {word} on the beach'."
            ) from None
        except PlaceholderError as exc:
            raise ELITEInputError(str(exc)) from None
        injections.append(injection)
        log.debug("ELITE words injected at token positions %s", injection.positions)
    conditioning = clip.encode_from_tokens_scheduled(tokens)
    # The placeholder's encoded vector identifies it later inside the UNet's context, wherever
    # conditioning nodes move it (see PlaceholderProbe).
    marked = []
    for cond, extras in conditioning:
        by_concept = {item.key: cond[:1, inj.index].detach().float().cpu() for (item, _), inj in zip(pairs, injections)}
        marked.append([cond, {**extras, PLACEHOLDER_KEY: by_concept[concept.key], CONCEPT_PLACEHOLDERS_KEY: by_concept}])
    return marked, injections[0]
