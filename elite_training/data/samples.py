"""Training samples for ELITE's two stages (docs/reference/elite.md §9.1): what a loaded record
(:class:`~.objects.ObjectImage`) becomes in the tensors a stage trains on.

Global stage, one sample per object (the reference's ``OpenImagesDataset``): the object's box padded
by 10 px on each side within the image is cropped, squashed to 512 x 512 (bicubic, no aspect kept)
for the UNet target, and to 224 x 224 with the reference's augmentations (horizontal flip p 0.5,
rotation within +-20 degrees p 0.5, box blur 3-7 px p 0.3, elastic p 0.3 without albumentations'
extra affine part; with torchvision's transforms) for CLIP. The caption is one of Textual Inversion's
27 templates with "S", its first letter replaced by "a" (the reference's quirk: "the photo of a S"
becomes "ahe photo of a S").

Local stage (``OpenImagesDatasetWithMask``): objects whose even mask box (``cal_bbox_by_seg``) is at
least 100 px each way with an aspect ratio in [0.5, 2]; see :func:`local_sample`.

Every random choice of sample ``i`` at step ``s`` comes from a generator seeded with (seed, s, i):
any process, any number of processes and a resumed run see the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from elite_core.common.images import clip_normalise

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

def _box_blur(image: torch.Tensor, kernel: int) -> torch.Tensor:
    padded = F.pad(image[None], (kernel // 2,) * 4, mode="reflect")
    return F.avg_pool2d(padded, kernel, stride=1)[0]


def clip_view(crop: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> CLIP-normalised (3, 224, 224) with the reference's augmentations."""
    image = TF.resize(crop, [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    u = torch.rand(6, generator=gen).tolist()
    if u[0] < 0.5:
        image = TF.horizontal_flip(image)
    if u[1] < 0.5:
        image = TF.rotate(image, angle=-20.0 + 40.0 * u[2], interpolation=InterpolationMode.BILINEAR)
    if u[3] < 0.3:
        image = _box_blur(image, int(torch.randint(1, 4, (1,), generator=gen)) * 2 + 1)  # 3, 5 or 7
    if u[4] < 0.3:  # albumentations 1.3's defaults: alpha 1 px, sigma 50 px (moves pixels by well under one)
        field = torch.rand(1, 2, 224, 224, generator=gen) * 2 - 1
        field = TF.gaussian_blur(field, [201, 201], [50.0, 50.0]).permute(0, 2, 3, 1)
        image = TF.elastic(image, field * (2.0 / 224), interpolation=InterpolationMode.BILINEAR)
    return clip_normalise(image[None])[0]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _template(gen: torch.Generator) -> str:
    return TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=gen))]


@dataclass
class GlobalSample:
    pixels: torch.Tensor  # (3, r, r) in [-1, 1]
    pixels_clip: torch.Tensor  # (3, 224, 224), CLIP-normalised
    caption: str


def global_sample(obj: ObjectImage, gen: torch.Generator, resolution: int) -> GlobalSample:
    crop = obj.image.crop(obj.crop or mask_crop_box(obj.mask, *obj.image.size))
    target = crop.resize((resolution, resolution), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(target, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    template = _template(gen)
    return GlobalSample(pixels, clip_view(_to_tensor(crop), gen), obj.caption or reference_caption(template))


# --------------------------------------------------------------------------- local stage

@dataclass
class LocalSample:
    pixels: torch.Tensor  # (3, r, r) in [-1, 1]: the object at a random scale (the UNet's target)
    mask: torch.Tensor  # (1, r/down, r/down): where the target is valid (the pasted area, shrunk)
    pixels_clip: torch.Tensor  # (3, 224, 224): the crop, CLIP-normalised, not augmented
    pixels_object: torch.Tensor  # (3, 224, 224): the masked object, jointly augmented, CLIP-normalised
    object_segmentation: torch.Tensor  # (3, 224, 224) in {0, 1}: its mask, augmented alike
    caption: str


def local_sample(obj: ObjectImage, gen: torch.Generator, resolution: int, latent_down: int) -> LocalSample:
    """The reference's local-stage sample: the object box padded by a random 10-19 px (clamped to the
    image) is cropped; the target is that crop at a random scale (:func:`_scaled_target`); the masked
    object and its mask go through the joint augmentation (:func:`_joint_augment`)."""
    width, height = obj.image.size
    top, bottom, left, right = obj.object_box
    pad = _randint(gen, 10, 19)
    box = (max(left - pad, 0), max(top - pad, 0), min(right + pad, width), min(bottom + pad, height))
    mask = Image.fromarray(obj.mask.astype(np.uint8) * 255)
    crop, crop_mask = obj.image.crop(box), mask.crop(box)
    pixels, valid, prefix = _scaled_target(crop, gen, resolution, latent_down)
    template = _template(gen)
    caption = obj.caption or prefix + template.format(PLACEHOLDER)[1:]
    masked = np.asarray(crop, dtype=np.float32) * (np.asarray(crop_mask)[..., None] / 255.0)
    obj_t, seg_t = _joint_augment(Image.fromarray(masked.astype(np.uint8)).resize((224, 224), Image.BICUBIC),
                                  crop_mask.resize((224, 224), Image.NEAREST), gen)
    clip_t = _to_tensor(crop.resize((224, 224), Image.BICUBIC))
    return LocalSample(pixels, valid, clip_normalise(clip_t[None])[0], clip_normalise(obj_t[None])[0],
                       (seg_t > 0.5).float().expand(3, -1, -1).clone(), caption)


def _scaled_target(crop: Image.Image, gen: torch.Generator, r: int, down: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Custom Diffusion's random scale: s in [170, 512] w.p. 2/3, else [614, 715] (at 512 px)."""
    u = torch.rand(2, generator=gen).tolist()
    low, high = (170, 512) if u[0] < 2 / 3 else (614, 715)
    size = _randint(gen, low * r // 512, high * r // 512) // 2 * 2
    latent = r // down
    valid = torch.ones(1, latent, latent)
    if size < 0.6 * r:
        canvas = Image.new("RGB", (r, r))
        x, y = _randint(gen, 0, r - size), _randint(gen, 0, r - size)
        canvas.paste(crop.resize((size, size), Image.BICUBIC), (x, y))
        valid = torch.zeros(1, latent, latent)
        valid[:, y // down + 1:(y + size) // down - 1, x // down + 1:(x + size) // down - 1] = 1.0
        target, prefix = canvas, ("a far away" if u[1] < 0.5 else "very small")
    elif size > r:
        x, y = _randint(gen, 0, size - r), _randint(gen, 0, size - r)
        target = crop.resize((size, size), Image.BICUBIC).crop((x, y, x + r, y + r))
        prefix = "zoomed in" if u[1] < 0.5 else "close up"
    else:
        target, prefix = crop.resize((r, r), Image.BICUBIC), "a"
    return _to_tensor(target) * 2.0 - 1.0, valid, prefix


def _joint_augment(obj: Image.Image, seg: Image.Image, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each with probability 1/2: resize to 224-256 and a random 224 crop; an integer rotation in
    [-30, 30] degrees; an integer translation in [-60, 60] px. Bicubic for the object, nearest for
    its mask, black borders. Returns (object in [0, 1], mask in {0, 1}) tensors."""
    u = torch.rand(3, generator=gen).tolist()
    if u[0] < 0.5:
        size = _randint(gen, 224, 256)
        x, y = _randint(gen, 0, size - 224), _randint(gen, 0, size - 224)
        obj = obj.resize((size, size), Image.BICUBIC).crop((x, y, x + 224, y + 224))
        seg = seg.resize((size, size), Image.NEAREST).crop((x, y, x + 224, y + 224))
    if u[1] < 0.5:
        angle = float(_randint(gen, -30, 30))
        obj = TF.rotate(obj, angle, interpolation=InterpolationMode.BICUBIC)
        seg = TF.rotate(seg, angle, interpolation=InterpolationMode.NEAREST)
    if u[2] < 0.5:
        shift = [_randint(gen, -60, 60), _randint(gen, -60, 60)]
        obj = TF.affine(obj, angle=0.0, translate=shift, scale=1.0, shear=[0.0], interpolation=InterpolationMode.BICUBIC)
        seg = TF.affine(seg, angle=0.0, translate=shift, scale=1.0, shear=[0.0], interpolation=InterpolationMode.NEAREST)
    seg_t = torch.from_numpy(np.asarray(seg, dtype=np.float32) / 255.0)[None]
    return _to_tensor(obj), seg_t

