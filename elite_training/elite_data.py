"""Training samples for ELITE's global stage from a plain folder (elite-reference §9.1).

Layout::

    <root>/images/<name>.jpg|png|webp     the photos
    <root>/masks/<name>.png               optional: the object's mask (white = object); without it
                                          the whole image is the object

One sample per image, as the reference's ``OpenImagesDataset`` makes one per object box: the box
(from the mask) padded by 10 px on each side within the image is cropped, squashed to 512 x 512
(bicubic, no aspect kept) for the UNet target, and to 224 x 224 with the reference's augmentations
(horizontal flip p 0.5, rotation within +-20 degrees p 0.5, box blur 3-7 px p 0.3, elastic p 0.3
without albumentations' extra affine part; with torchvision's transforms) for CLIP. The caption is one of Textual Inversion's 27 templates with
"S", its first letter replaced by "a" (the reference's quirk: "the photo of a S" becomes
"ahe photo of a S").

Every random choice of sample ``i`` at step ``s`` comes from a generator seeded with (seed, s, i):
any process, any number of processes and a resumed run see the same samples.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from elite_core.clip_input import CLIP_MEAN, CLIP_STD

log = logging.getLogger("elite.train.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PLACEHOLDER = "S"
BOX_PADDING = 10
TEMPLATES = (  # Textual Inversion's imagenet_templates_small, as the reference uses them
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)


class DataError(ValueError):
    """The dataset cannot be used; the message says what to fix."""


def reference_caption(template: str) -> str:
    return "a" + template.format(PLACEHOLDER)[1:]


def reference_placeholder_index(caption: str) -> int:
    """The reference's placeholder index (§1.1): 1 + the last space-separated word equal to "S"
    (a word index used as a token index; 0 when absent)."""
    index = 0
    for i, word in enumerate(caption.strip().split(" ")):
        if word == PLACEHOLDER:
            index = i + 1
    return index


def sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_003 + position)


def object_box(mask: np.ndarray | None, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the mask's object padded by 10 px within the image."""
    if mask is None or not mask.any():
        return 0, 0, width, height
    rows, cols = np.nonzero(mask)
    return (max(int(cols.min()) - BOX_PADDING, 0), max(int(rows.min()) - BOX_PADDING, 0),
            min(int(cols.max()) + 1 + BOX_PADDING, width), min(int(rows.max()) + 1 + BOX_PADDING, height))


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
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return (image - mean) / std


@dataclass
class FolderSample:
    pixels: torch.Tensor  # (3, 512, 512) in [-1, 1]
    pixels_clip: torch.Tensor  # (3, 224, 224), CLIP-normalised
    caption: str


class FolderDataset:
    """The plain folder layout; unreadable files are skipped (and counted) when the dataset opens."""

    def __init__(self, root: str, resolution: int = 512):
        images = os.path.join(root, "images")
        if not os.path.isdir(images):
            raise DataError(f"{root!r} has no images/ folder. Put the photos in {images}/ and their object "
                            "masks (white = object, same name, .png) in masks/.")
        self.resolution = resolution
        self.items, self.skipped = [], 0
        for name in sorted(os.listdir(images)):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            mask = os.path.join(root, "masks", os.path.splitext(name)[0] + ".png")
            try:
                with Image.open(os.path.join(images, name)) as img:
                    img.verify()
            except (OSError, SyntaxError) as exc:
                self.skipped += 1
                log.warning("skipping %s: not a readable image (%s)", name, exc)
                continue
            self.items.append((os.path.join(images, name), mask if os.path.isfile(mask) else None))
        if self.skipped:
            log.warning("%d unreadable image(s) skipped in %s", self.skipped, images)
        if not self.items:
            raise DataError(f"No readable images in {images}/ ({', '.join(IMAGE_EXTENSIONS)}).")

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int, gen: torch.Generator) -> FolderSample:
        image_path, mask_path = self.items[index % len(self.items)]
        with Image.open(image_path) as img:
            image = ImageOps.exif_transpose(img).convert("RGB")
        mask = None
        if mask_path:
            with Image.open(mask_path) as m:
                mask = np.asarray(m.convert("L").resize(image.size, Image.NEAREST)) > 127
        box = object_box(mask, *image.size)
        crop = image.crop(box)
        target = crop.resize((self.resolution, self.resolution), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(target, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        crop_tensor = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
        template = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=gen))]
        return FolderSample(pixels, clip_view(crop_tensor, gen), reference_caption(template))
