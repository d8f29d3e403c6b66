"""The evaluation metrics inside ComfyUI: the metric encoders from ``models/elite_eval`` and the
scores of an IMAGE batch against a concept image and a prompt (elite_core.evaluation)."""

from __future__ import annotations

import functools
import logging
import os

import torch

import folder_paths

from ..common.checks import ELITEInputError, check_image, check_mask
from ..common.images import images_to_pil
from ..evaluation.encoders import ClipEncoder, EvalModelError, ImageEncoder, load_encoder
from ..evaluation.metrics import cosine_matrix, masked_view
from .folders import missing_file_message, register_folder

log = logging.getLogger("elite")

MODEL_FOLDER = "elite_eval"
NONE = "none"
PUT = ("CLIP ViT-B/32 (openai/clip-vit-base-patch32) and DINO ViT-S/16 (facebook/dino-vits16) as Hugging Face "
       "folders or their model.safetensors (named e.g. clip-vit-base-patch32.safetensors)")


def register_model_folder() -> None:
    """Register ``models/elite_eval`` for the metric encoders (safetensors files, or HF folders)."""
    register_folder(MODEL_FOLDER, {".safetensors"})


def encoder_names() -> list[str]:
    return folder_paths.get_filename_list(MODEL_FOLDER)


def _comfy_tokenizer() -> str | None:
    import comfy.sd1_clip

    folder = os.path.join(os.path.dirname(os.path.abspath(comfy.sd1_clip.__file__)), "sd1_tokenizer")
    return folder if os.path.isdir(folder) else None


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float, kind: str | None) -> ImageEncoder:
    return load_encoder(path, kind, tokenizer_dir=_comfy_tokenizer())


def load_metric_encoder(name: str, kind: str | None) -> ImageEncoder:
    """A metric encoder by its name in models/elite_eval; a model.safetensors inside a Hugging Face
    folder loads with that folder (its config.json and tokenizer). Kept loaded between runs."""
    problem = missing_file_message(MODEL_FOLDER, name, "metric encoder", PUT)
    if problem:
        raise ELITEInputError(problem)
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    folder = os.path.dirname(path)
    if os.path.isfile(os.path.join(folder, "config.json")):
        path = folder
    try:
        return _load(path, os.path.getmtime(path), kind)
    except (EvalModelError, FileNotFoundError) as exc:
        raise ELITEInputError(f"'{name}': {exc}") from None


def _pil_views(images: torch.Tensor, masks: torch.Tensor | None, crop: bool) -> list:
    if masks is None:
        return images_to_pil(images)
    if masks.shape[0] not in (1, images.shape[0]):
        raise ELITEInputError(f"{masks.shape[0]} masks for {images.shape[0]} images: give one mask, or one per image.")
    if tuple(masks.shape[1:]) != tuple(images.shape[1:3]):
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=images.shape[1:3], mode="bilinear",
                                                align_corners=False)[:, 0]
    views = []
    for i in range(images.shape[0]):
        try:
            view = masked_view(images[i, ..., :3].float().cpu(), masks[min(i, masks.shape[0] - 1)].cpu(), crop)
        except ValueError as exc:
            raise ELITEInputError(str(exc)) from None
        views.extend(images_to_pil(view[None]))  # cropped views differ in size: one at a time
    return views


def score_images(images: torch.Tensor, reference: torch.Tensor, prompt: str, clip: ClipEncoder | None,
                 dino: ImageEncoder | None, reference_mask: torch.Tensor | None = None,
                 image_mask: torch.Tensor | None = None, crop: bool = False) -> dict[str, list[float]]:
    """Per generated image: CLIP-T (against ``prompt``), CLIP-I and DINO-I (mean over the reference
    images), and masked CLIP-I when a reference mask is given (the images masked too with
    ``image_mask``, else whole)."""
    check_image(images)
    check_image(reference)
    for mask in (reference_mask, image_mask):
        if mask is not None:
            check_mask(mask)
    scores: dict[str, list[float]] = {}
    generated = images_to_pil(images)
    if clip is not None:
        emb = clip.encode_images(generated)
        if prompt.strip():
            scores["clip_t"] = cosine_matrix(clip.encode_texts([prompt]), emb)[0].tolist()
        scores["clip_i"] = cosine_matrix(clip.encode_images(images_to_pil(reference)), emb).mean(0).tolist()
        if reference_mask is not None:
            refs = clip.encode_images(_pil_views(reference, reference_mask, crop))
            views = clip.encode_images(_pil_views(images, image_mask, crop)) if image_mask is not None else emb
            scores["masked_clip_i"] = cosine_matrix(refs, views).mean(0).tolist()
    if dino is not None:
        scores["dino_i"] = cosine_matrix(dino.encode_images(images_to_pil(reference)),
                                         dino.encode_images(generated)).mean(0).tolist()
    return scores
