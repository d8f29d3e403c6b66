"""Training samples for ELITE's two stages, transform for transform as the authors' ``datasets.py``
makes them (docs/reference/data-pipeline.md): what a loaded record (:class:`~.objects.ObjectImage`)
becomes in the tensors a stage trains on.

Global stage, one sample per object (the reference's ``OpenImagesDataset``): the object's box padded
by 10 px on each side within the image is cropped; OpenCV's cubic resize to ``resolution``² (no aspect
kept) gives the UNet target, the CLIP augmentation of :mod:`.augmentations` the CLIP input. The
caption is one of Textual Inversion's 27 templates with "S", its first letter replaced by "a" (the
reference's quirk: "the photo of a S" becomes "ahe photo of a S").

Local stage (``OpenImagesDatasetWithMask``): objects whose even mask box (``cal_bbox_by_seg``) is at
least 100 px each way with an aspect ratio in [0.5, 2]; see :func:`local_sample`.

Every random choice of sample ``i`` at step ``s`` comes from a generator seeded with (seed, s, i):
any process, any number of processes and a resumed run see the same samples. The draws of one sample
are a plain dataclass (:class:`GlobalDraws`, :class:`LocalDraws`), so a test can give the authors'
code path the very same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from elite_core.common.images import clip_normalise

from .augmentations import (
    CLIP_SIDE,
    ClipDraws,
    JointDraws,
    chance,
    clip_augment,
    draw_clip,
    draw_joint,
    joint_augment,
    object_levels,
    randint,
)
from .objects import ObjectImage, mask_crop_box

PLACEHOLDER = "S"
TEMPLATES = (  # Textual Inversion's imagenet_templates_small, as the reference uses them
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)



def reference_caption(template: str) -> str:
    return "a" + template.format(PLACEHOLDER)[1:]


def reference_placeholder_index(caption: str) -> int:
    """The reference's placeholder index (docs/reference/elite.md §1.1): 1 + the last space-separated word equal to "S"
    (a word index used as a token index; 0 when absent)."""
    index = 0
    for i, word in enumerate(caption.strip().split(" ")):
        if word == PLACEHOLDER:
            index = i + 1
    return index


def sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_003 + position)


# --------------------------------------------------------------------------- global stage

def clip_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> CLIP-normalised (3, H, W) float32, as torchvision's ToTensor + Normalize."""
    return clip_normalise(torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255))[0]


def vae_pixels(image: np.ndarray, resolution: int) -> torch.Tensor:
    """``process``: OpenCV cubic to resolution² on uint8, then /127.5 - 1 in float32 -> (3, r, r)."""
    resized = cv2.resize(np.ascontiguousarray(image), (resolution, resolution), interpolation=cv2.INTER_CUBIC)
    return torch.from_numpy(resized.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


@dataclass(frozen=True)
class GlobalDraws:
    template: int  # index into TEMPLATES
    clip: ClipDraws


def draw_global(gen: torch.Generator) -> GlobalDraws:
    return GlobalDraws(randint(gen, 0, len(TEMPLATES) - 1), draw_clip(gen))


@dataclass
class GlobalSample:
    pixels: torch.Tensor  # (3, r, r) in [-1, 1]
    pixels_clip: torch.Tensor  # (3, 224, 224), CLIP-normalised
    caption: str


def global_sample(obj: ObjectImage, gen: torch.Generator, resolution: int) -> GlobalSample:
    return make_global_sample(obj, draw_global(gen), resolution)


def make_global_sample(obj: ObjectImage, draws: GlobalDraws, resolution: int) -> GlobalSample:
    left, top, right, bottom = obj.crop or mask_crop_box(obj.mask, *obj.image.size)
    crop = np.asarray(obj.image)[top:bottom, left:right]
    return GlobalSample(vae_pixels(crop, resolution), clip_tensor(clip_augment(crop, draws.clip)),
                        obj.caption or reference_caption(TEMPLATES[draws.template]))


# --------------------------------------------------------------------------- local stage

SMALL_PREFIXES = ("a far away", "very small")
ZOOM_PREFIXES = ("zoomed in", "close up")


@dataclass(frozen=True)
class ScaleDraws:
    """Custom Diffusion's random scale (the reference's ``custom_aug``)."""
    side: int  # the even side the crop is resized to: odd draws are rounded up
    row: int = 0  # centre row / column of the pasted crop (small) or of the kept window (zoomed in)
    col: int = 0
    prefix: int = 0  # which of the branch's two caption prefixes


def draw_scale(gen: torch.Generator, r: int) -> ScaleDraws:
    """A side in [r // 3, r] w.p. 2/3, else in [int(1.2 r), int(1.4 r) - 1] ([170, 512] / [614, 715] at
    512); an odd side grows by one."""
    if chance(gen, 2 / 3):
        side = randint(gen, r // 3, r)
    else:
        side = randint(gen, int(1.2 * r), int(1.4 * r) - 1)
    side += side % 2
    if side < 0.6 * r:
        prefix = randint(gen, 0, 1)
        return ScaleDraws(side, randint(gen, side // 2, r - side // 2), randint(gen, side // 2, r - side // 2), prefix)
    if side > r:
        prefix = randint(gen, 0, 1)
        return ScaleDraws(side, randint(gen, r // 2, side - r // 2), randint(gen, r // 2, side - r // 2), prefix)
    return ScaleDraws(side)


@dataclass(frozen=True)
class LocalDraws:
    pad: int  # px around the object box, in [10, 19]
    scale: ScaleDraws
    template: int
    joint: JointDraws


def draw_local(gen: torch.Generator, resolution: int) -> LocalDraws:
    """In the reference's order: the padding, the scale, the caption, the joint augmentation."""
    pad = randint(gen, 10, 19)
    scale = draw_scale(gen, resolution)
    return LocalDraws(pad, scale, randint(gen, 0, len(TEMPLATES) - 1), draw_joint(gen))


@dataclass
class LocalSample:
    pixels: torch.Tensor  # (3, r, r) in [-1, 1]: the object at a random scale (the UNet's target)
    mask: torch.Tensor  # (1, r/down, r/down): where the target is valid (the pasted area, shrunk)
    pixels_clip: torch.Tensor  # (3, 224, 224): the crop, CLIP-normalised, not augmented
    pixels_object: torch.Tensor  # (3, 224, 224): the masked object, jointly augmented, CLIP-normalised
    object_segmentation: torch.Tensor  # (3, 224, 224) in {0, 1}: its mask, augmented alike
    caption: str


def local_sample(obj: ObjectImage, gen: torch.Generator, resolution: int, latent_down: int,
                 clamp_object_resize: bool = False) -> LocalSample:
    return make_local_sample(obj, draw_local(gen, resolution), resolution, latent_down, clamp_object_resize)


def make_local_sample(obj: ObjectImage, draws: LocalDraws, resolution: int, latent_down: int,
                      clamp_object_resize: bool = False) -> LocalSample:
    """The reference's local-stage sample: the object box padded by the drawn 10-19 px (within the
    image) is cropped; the target is that crop at the drawn scale (:func:`scaled_target`); the crop
    times its mask is resized cubically in floating point and cast to 8 bits (:func:`~.augmentations.object_levels`:
    wrapped as the reference does, or clamped), then goes with its mask through the joint augmentation."""
    height, width = obj.mask.shape
    top, bottom, left, right = obj.object_box
    rows = slice(max(top - draws.pad, 0), min(bottom + draws.pad, height))
    cols = slice(max(left - draws.pad, 0), min(right + draws.pad, width))
    crop, crop_mask = np.asarray(obj.image)[rows, cols], obj.mask[rows, cols]
    pixels, valid, prefix = scaled_target(crop, draws.scale, resolution, latent_down)
    caption = obj.caption or prefix + TEMPLATES[draws.template].format(PLACEHOLDER)[1:]
    masked = crop * crop_mask[..., None].astype(np.float64)
    masked = cv2.resize(masked, (CLIP_SIDE, CLIP_SIDE), interpolation=cv2.INTER_CUBIC)
    seg = cv2.resize(crop_mask.astype(np.uint8) * 255, (CLIP_SIDE, CLIP_SIDE), interpolation=cv2.INTER_NEAREST)
    obj_view, seg = joint_augment(object_levels(masked, clamp_object_resize), seg, draws.joint)
    clip_view = cv2.resize(np.ascontiguousarray(crop), (CLIP_SIDE, CLIP_SIDE), interpolation=cv2.INTER_CUBIC)
    segmentation = torch.from_numpy(seg).float().div(255)[None].expand(3, -1, -1).clone()
    return LocalSample(pixels, valid, clip_tensor(clip_view), clip_tensor(obj_view), segmentation, caption)


def _levels(image: Image.Image) -> np.ndarray:
    """uint8 levels -> [-1, 1] computed in float64, then float32 (``custom_aug``)."""
    return (np.asarray(image, dtype=np.uint8) / 127.5 - 1.0).astype(np.float32)


def scaled_target(crop: np.ndarray, draws: ScaleDraws, r: int, down: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The crop resized (PIL bicubic) to the drawn side: under 0.6 r it is pasted, centred on the drawn
    point, on a canvas of 0.0 (mid-grey in [-1, 1]) and only the pasted square less a one-latent
    border is valid; over r the r x r window around the drawn point is kept; else it is squashed to r."""
    side, image = draws.side, Image.fromarray(np.ascontiguousarray(crop))
    latent = r // down
    if side < 0.6 * r:
        canvas = np.zeros((r, r, 3), dtype=np.float32)
        top, left = draws.row - side // 2, draws.col - side // 2
        canvas[top:top + side, left:left + side] = _levels(image.resize((side, side), Image.BICUBIC))
        valid = torch.zeros(1, latent, latent)
        valid[:, top // down + 1:(top + side) // down - 1, left // down + 1:(left + side) // down - 1] = 1.0
        return torch.from_numpy(canvas).permute(2, 0, 1), valid, SMALL_PREFIXES[draws.prefix]
    valid = torch.ones(1, latent, latent)
    if side > r:
        top, left = draws.row - r // 2, draws.col - r // 2
        window = _levels(image.resize((side, side), Image.BICUBIC))[top:top + r, left:left + r]
        return torch.from_numpy(np.ascontiguousarray(window)).permute(2, 0, 1), valid, ZOOM_PREFIXES[draws.prefix]
    return torch.from_numpy(_levels(image.resize((r, r), Image.BICUBIC))).permute(2, 0, 1), valid, "a"
