"""The DreamBench metrics of subject and prompt fidelity, pure torch (the encoders are in encoders.py).

* CLIP-I and DINO-I (subject fidelity): the mean cosine over all (reference, generated) image pairs of one prompt.
* CLIP-T (prompt fidelity): the mean cosine between the prompt's CLIP text embedding and each generated image.
  Raw cosines (about 0.25-0.31 on DreamBench), never CLIPScore's ``100 * max(cos, 0)``.
* Aggregation as DreamBooth, Textual Inversion and CatVersion report it: per seed, the per-prompt values are
  averaged over the prompts of a subject, then over subjects; the mean and the spread over seeds are reported.
* Masked CLIP-I (CatVersion): the background is removed before CLIP-I, so a copied background earns nothing.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
from torchvision.ops import masks_to_boxes

WHITE = 1.0  # background-removed cut-outs are shown on white


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (n, m) of the rows of ``a`` (n, d) and ``b`` (m, d); both sides are normalised.
    Computed in float64 when either input is float64, otherwise in float32."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected embeddings (n, d) and (m, d) of the same width, got {tuple(a.shape)} and {tuple(b.shape)}.")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a = torch.nn.functional.normalize(a.to(dtype), dim=1)
    b = torch.nn.functional.normalize(b.to(dtype).to(a.device), dim=1)
    return a @ b.T


def image_similarity(reference_emb: torch.Tensor, generated_emb: torch.Tensor) -> float:
    """CLIP-I or DINO-I of one prompt: the mean cosine over all (reference, generated) pairs."""
    return cosine_matrix(reference_emb, generated_emb).mean().item()


def text_similarity(text_emb: torch.Tensor, generated_emb: torch.Tensor) -> float:
    """CLIP-T of one prompt: the mean cosine of its text embedding (d) or (1, d) with each generated image."""
    return cosine_matrix(text_emb.reshape(1, -1), generated_emb).mean().item()


@dataclass(frozen=True)
class MetricSummary:
    """One metric over a benchmark run. ``mean`` is the mean over seeds of each seed's score (the mean over
    subjects of each subject's mean over its prompts); ``std`` is the sample standard deviation over seeds
    (ddof=1, the spread a reader would expect to see on a new seed; 0.0 for a single seed);
    ``per_subject`` holds each subject's mean over its prompts, averaged over seeds."""

    mean: float
    std: float
    num_seeds: int
    per_seed: dict
    per_subject: dict


def aggregate(scores: Mapping[tuple[Hashable, Hashable, Hashable], float]) -> MetricSummary:
    """Aggregate per-prompt values ``{(seed, subject, prompt): value}`` (each from image_similarity or
    text_similarity) in the papers' order: prompts within a subject, then subjects, then seeds.

    Every subject weighs the same whatever its number of prompts (a flat mean over all prompts would let
    subjects with more prompts count more). Every seed must cover the same subjects.
    """
    if not scores:
        raise ValueError("No scores to aggregate: expected {(seed, subject, prompt): value} with at least one entry.")
    by_seed: dict = {}
    for (seed, subject, _prompt), value in scores.items():
        by_seed.setdefault(seed, {}).setdefault(subject, []).append(float(value))
    subjects = set(next(iter(by_seed.values())))
    for seed, per_subject in by_seed.items():
        if set(per_subject) != subjects:
            raise ValueError(
                f"Seed {seed!r} covers subjects {sorted(map(str, per_subject))}, another seed covers "
                f"{sorted(map(str, subjects))}: every seed must score the same subjects."
            )
    subject_means = {seed: {s: sum(v) / len(v) for s, v in per.items()} for seed, per in by_seed.items()}
    per_seed = {seed: sum(m.values()) / len(m) for seed, m in subject_means.items()}
    n = len(per_seed)
    mean = sum(per_seed.values()) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in per_seed.values()) / (n - 1)) if n > 1 else 0.0
    per_subject = {s: sum(m[s] for m in subject_means.values()) / n for s in next(iter(subject_means.values()))}
    return MetricSummary(mean=mean, std=std, num_seeds=n, per_seed=per_seed, per_subject=per_subject)


def _object_pixels(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask as booleans (object = True, thresholded at 0.5 as the pack's object masks are), checked."""
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an image (height, width, 3) with values from 0 to 1, got {tuple(image.shape)}.")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"The mask {tuple(mask.shape)} must be (height, width) of its image {tuple(image.shape[:2])}.")
    obj = mask.to(image.device) > 0.5
    if not obj.any():
        raise ValueError(
            "The object mask is empty (no pixel above 0.5): masked CLIP-I needs the object marked with 1 and the "
            "background with 0. Check the mask (or invert it if the object is 0)."
        )
    return obj


def fill_background(image: torch.Tensor, mask: torch.Tensor, fill: float | tuple[float, float, float] = WHITE) -> torch.Tensor:
    """The image (H, W, 3) with every background pixel (mask <= 0.5; object = 1) set to ``fill``: white by
    default, as background-removed cut-outs are; a number or an RGB triple from 0 to 1."""
    obj = _object_pixels(image, mask)
    colour = torch.as_tensor(fill, dtype=image.dtype, device=image.device).expand(3)
    return torch.where(obj.unsqueeze(-1), image, colour)


def crop_to_mask_box(image: torch.Tensor, mask: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The image (H, W, 3) cropped to the bounding box of the object (mask > 0.5), widened on each side by
    ``margin`` times the box's width (left, right) and height (top, bottom), rounded and clamped to the image."""
    if margin < 0:
        raise ValueError(f"The crop margin must be 0 or more (a fraction of the object's box), got {margin}.")
    obj = _object_pixels(image, mask)
    x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(obj[None].float())[0])  # inclusive pixel coordinates
    dx, dy = round(margin * (x1 - x0 + 1)), round(margin * (y1 - y0 + 1))
    height, width = image.shape[:2]
    return image[max(y0 - dy, 0):min(y1 + dy + 1, height), max(x0 - dx, 0):min(x1 + dx + 1, width)]


def masked_view(image: torch.Tensor, mask: torch.Tensor, crop: bool, margin: float = 0.0,
                fill: float | tuple[float, float, float] = WHITE) -> torch.Tensor:
    """What masked CLIP-I encodes: the background filled (white by default), then optionally cropped to the
    object's box so that the object fills the encoder's view."""
    view = fill_background(image, mask, fill)
    return crop_to_mask_box(view, mask, margin) if crop else view
