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


def read_mask(path: str, size: tuple[int, int]) -> np.ndarray:
    """The object mask at ``path`` as booleans (white = object), resized (nearest) to ``size``."""
    with Image.open(path) as m:
        return np.asarray(m.convert("L").resize(size, Image.NEAREST)) > 127


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
        mask = read_mask(mask_path, image.size) if mask_path else None
        box = object_box(mask, *image.size)
        crop = image.crop(box)
        target = crop.resize((self.resolution, self.resolution), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(target, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        crop_tensor = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
        template = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=gen))]
        return FolderSample(pixels, clip_view(crop_tensor, gen), reference_caption(template))


# --------------------------------------------------------------------------- local stage

MIN_OBJECT_SIDE = 100  # px: the reference keeps mask boxes at least this tall and wide ...
ASPECT_RANGE = (0.5, 2.0)  # ... and of this aspect ratio


@dataclass
class LocalSample:
    pixels: torch.Tensor  # (3, r, r) in [-1, 1]: the object at a random scale (the UNet's target)
    mask: torch.Tensor  # (1, r/down, r/down): where the target is valid (the pasted area, shrunk)
    pixels_clip: torch.Tensor  # (3, 224, 224): the crop, CLIP-normalised, not augmented
    pixels_object: torch.Tensor  # (3, 224, 224): the masked object, jointly augmented, CLIP-normalised
    object_segmentation: torch.Tensor  # (3, 224, 224) in {0, 1}: its mask, augmented alike
    caption: str


def _even_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask's object, odd extents enlarged by 1 px where they fit
    (the reference's ``cal_bbox_by_seg``)."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    if (bottom - top) % 2 and bottom + 1 < mask.shape[0]:
        bottom += 1
    if (right - left) % 2 and right + 1 < mask.shape[1]:
        right += 1
    return top, bottom, left, right


def _clip_normalise(image: torch.Tensor) -> torch.Tensor:
    return (image - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


class LocalFolderDataset(FolderDataset):
    """The plain folder layout for the local stage: every image needs its mask; objects smaller than
    100 px or of aspect outside [0.5, 2] are skipped and counted, as the reference filters them."""

    def __init__(self, root: str, resolution: int = 512, latent_down: int = 8):
        super().__init__(root, resolution)
        self.latent_down = latent_down
        kept = []
        for image_path, mask_path in self.items:
            if mask_path is None:
                self.skipped += 1
                log.warning("skipping %s for the local stage: it has no mask in masks/", os.path.basename(image_path))
                continue
            with Image.open(image_path) as img:
                mask = read_mask(mask_path, img.size)
            if not mask.any():
                self.skipped += 1
                continue
            top, bottom, left, right = _even_box(mask)
            height, width = bottom - top, right - left
            if min(height, width) < MIN_OBJECT_SIDE or not ASPECT_RANGE[0] <= height / width <= ASPECT_RANGE[1]:
                self.skipped += 1
                continue
            kept.append((image_path, mask_path))
        self.items = kept
        if not self.items:
            raise DataError(f"No image in {root!r} has an object mask of at least {MIN_OBJECT_SIDE} px with an aspect "
                            f"ratio in {ASPECT_RANGE}: the local stage needs masks/ for its images.")

    def sample(self, index: int, gen: torch.Generator) -> LocalSample:
        image_path, mask_path = self.items[index % len(self.items)]
        with Image.open(image_path) as img:
            image = ImageOps.exif_transpose(img).convert("RGB")
        mask = Image.fromarray(read_mask(mask_path, image.size).astype(np.uint8) * 255)
        top, bottom, left, right = _even_box(np.asarray(mask) > 0)
        pad = _randint(gen, 10, 19)
        box = (max(left - pad, 0), max(top - pad, 0), right + pad, bottom + pad)
        crop, crop_mask = image.crop(box), mask.crop(box)
        pixels, valid, prefix = self._scaled_target(crop, gen)
        template = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=gen))]
        caption = prefix + template.format(PLACEHOLDER)[1:]
        obj = Image.fromarray((np.asarray(crop, dtype=np.float32) * (np.asarray(crop_mask)[..., None] / 255.0)).astype(np.uint8))
        obj_t, seg_t = self._joint_augment(obj.resize((224, 224), Image.BICUBIC),
                                           crop_mask.resize((224, 224), Image.NEAREST), gen)
        clip_t = _to_tensor(crop.resize((224, 224), Image.BICUBIC))
        return LocalSample(pixels, valid, _clip_normalise(clip_t), _clip_normalise(obj_t),
                           (seg_t > 0.5).float().expand(3, -1, -1).clone(), caption)

    def _scaled_target(self, crop: Image.Image, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Custom Diffusion's random scale: s in [170, 512] w.p. 2/3, else [614, 715] (at 512 px)."""
        r, down = self.resolution, self.latent_down
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

    @staticmethod
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
