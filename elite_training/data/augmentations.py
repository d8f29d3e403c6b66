"""The reference's image augmentations on OpenCV, each split into its random draws (a small frozen
dataclass, drawn from the sample's ``torch.Generator``) and a deterministic transform of those draws,
so a test can hand the same draws to the authors' code path (docs/reference/data-pipeline.md §4, §5).

* :func:`clip_augment`: the global stage's CLIP augmentation, albumentations 1.3.0's
  ``Compose([Resize(224, 224), HorizontalFlip(p=0.5), Rotate(limit=20), Blur(p=0.3),
  ElasticTransform(p=0.3)])`` at that version's defaults, restated on OpenCV (bilinear, reflected
  borders, the elastic warp's random affine part included). tests/test_elite_data_reference.py pins
  it against albumentations 1.3.0 itself.
* :func:`joint_augment`: the local stage's joint augmentation of the masked object and its mask
  (the reference's ``aug_cv2``).
* :func:`object_levels`: the cubic-resized masked object cast to 8 bits as the reference does (its
  float -> uint8 cast wraps out-of-range values around), or clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

CLIP_SIDE = 224


def randint(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def chance(gen: torch.Generator, p: float) -> bool:
    """True with probability p."""
    return float(torch.rand((), generator=gen, dtype=torch.float64)) < p


# --------------------------------------------------------------------------- global stage: CLIP view

@dataclass(frozen=True)
class ClipDraws:
    """The draws of the CLIP augmentation; None leaves that transform out."""
    flip: bool = False  # HorizontalFlip, p 0.5
    angle: float | None = None  # Rotate: degrees, uniform in [-20, 20], p 0.5
    blur: int | None = None  # Blur: the box kernel's side, 3, 5 or 7, p 0.3
    elastic_seed: int | None = None  # ElasticTransform: its random_state, an integer in [0, 10000], p 0.3


def draw_clip(gen: torch.Generator) -> ClipDraws:
    """The transforms' draws in albumentations' order, with its probabilities and ranges."""
    flip = chance(gen, 0.5)
    angle = -20.0 + 40.0 * float(torch.rand((), generator=gen, dtype=torch.float64)) if chance(gen, 0.5) else None
    blur = 2 * randint(gen, 1, 3) + 1 if chance(gen, 0.3) else None
    elastic_seed = randint(gen, 0, 10_000) if chance(gen, 0.3) else None
    return ClipDraws(flip, angle, blur, elastic_seed)


def clip_augment(crop: np.ndarray, draws: ClipDraws) -> np.ndarray:
    """(H, W, 3) uint8 -> (224, 224, 3) uint8: bilinear resize (no antialiasing), then the drawn transforms."""
    image = np.ascontiguousarray(crop)
    if image.shape[:2] != (CLIP_SIDE, CLIP_SIDE):
        image = cv2.resize(image, (CLIP_SIDE, CLIP_SIDE), interpolation=cv2.INTER_LINEAR)
    if draws.flip:
        image = cv2.flip(image, 1)
    if draws.angle is not None:
        image = _rotate_reflected(image, draws.angle)
    if draws.blur is not None:
        image = cv2.blur(image, (draws.blur, draws.blur))  # mean filter, borders reflected (101)
    if draws.elastic_seed is not None:
        image = elastic_warp(image, draws.elastic_seed)
    return image


def _rotate_reflected(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate's image path: about the pixel grid's centre ((w-1)/2, (h-1)/2), bilinear, reflected borders."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def elastic_warp(image: np.ndarray, seed: int, alpha: float = 1.0, sigma: float = 50.0,
                 alpha_affine: float = 50.0) -> np.ndarray:
    """ElasticTransform 1.3.0 (approximate=False, same_dxdy=False) with numpy's RandomState(seed):
    first a random affine map moving three points by up to ``alpha_affine`` px each way, then a
    displacement field of uniform noise in [-1, 1] smoothed by a Gaussian of ``sigma`` px, times
    ``alpha``; both bilinear with reflected borders."""
    state = np.random.RandomState(seed)
    h, w = image.shape[:2]
    centre = np.array((h, w), dtype=np.float32) // 2  # (rows, columns) used as (x, y), as the original does
    third = min(h, w) // 3
    source = np.array([centre + third, [centre[0] + third, centre[1] - third], centre - third], dtype=np.float32)
    target = source + state.uniform(-alpha_affine, alpha_affine, size=source.shape).astype(np.float32)
    image = cv2.warpAffine(image, cv2.getAffineTransform(source, target), (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)
    dx = np.float32(gaussian_filter(state.rand(h, w) * 2 - 1, sigma) * alpha)
    dy = np.float32(gaussian_filter(state.rand(h, w) * 2 - 1, sigma) * alpha)
    columns, rows = np.meshgrid(np.arange(w), np.arange(h))
    return cv2.remap(image, np.float32(columns + dx), np.float32(rows + dy), interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)


# --------------------------------------------------------------------------- local stage: the object view

@dataclass(frozen=True)
class JointDraws:
    """The draws of the joint augmentation; None leaves that step out."""
    resize: tuple[int, int, int] | None = None  # (side in [224, 256], first row, first column of the 224 window)
    angle: int | None = None  # whole degrees in [-30, 30]
    shift: tuple[int, int] | None = None  # (x, y) in whole pixels, each in [-60, 60]


def draw_joint(gen: torch.Generator) -> JointDraws:
    """Each step with probability 1/2, in the reference's order."""
    resize = None
    if chance(gen, 0.5):
        side = randint(gen, CLIP_SIDE, 256)
        resize = (side, randint(gen, 0, side - CLIP_SIDE), randint(gen, 0, side - CLIP_SIDE))
    angle = randint(gen, -30, 30) if chance(gen, 0.5) else None
    shift = (randint(gen, -60, 60), randint(gen, -60, 60)) if chance(gen, 0.5) else None
    return JointDraws(resize, angle, shift)


def joint_augment(obj: np.ndarray, seg: np.ndarray, draws: JointDraws) -> tuple[np.ndarray, np.ndarray]:
    """The masked object (224, 224, 3) uint8 and its mask (224, 224) uint8 through the same steps:
    resize (cubic / nearest) and a 224 window; a rotation about (112, 112); a translation. Both
    warps fill with black (0) outside."""
    if draws.resize is not None:
        side, row, col = draws.resize
        obj = cv2.resize(obj, (side, side), interpolation=cv2.INTER_CUBIC)[row:row + CLIP_SIDE, col:col + CLIP_SIDE]
        seg = cv2.resize(seg, (side, side), interpolation=cv2.INTER_NEAREST)[row:row + CLIP_SIDE, col:col + CLIP_SIDE]
    warps = []
    if draws.angle is not None:
        warps.append(cv2.getRotationMatrix2D((112, 112), draws.angle, 1))
    if draws.shift is not None:
        warps.append(np.float32([[1, 0, draws.shift[0]], [0, 1, draws.shift[1]]]))
    for matrix in warps:
        obj = cv2.warpAffine(np.ascontiguousarray(obj), matrix, (CLIP_SIDE, CLIP_SIDE), flags=cv2.INTER_CUBIC)
        seg = cv2.warpAffine(np.ascontiguousarray(seg), matrix, (CLIP_SIDE, CLIP_SIDE), flags=cv2.INTER_NEAREST)
    return np.ascontiguousarray(obj), np.ascontiguousarray(seg)


def object_levels(values: np.ndarray, clamp: bool = False) -> np.ndarray:
    """Float levels -> uint8 as the reference's ``.astype('uint8')`` does on x86-64: truncated toward
    zero, then taken modulo 256 (the cubic overshoot at an object's edges, e.g. -46 or 283, becomes
    210 or 27). ``clamp`` clips to [0, 255] before the same truncation instead."""
    if clamp:
        return np.clip(values, 0, 255).astype(np.uint8)
    return (np.trunc(values).astype(np.int64) & 0xFF).astype(np.uint8)
