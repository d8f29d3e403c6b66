"""Training samples for ELITE's two stages (elite-reference §9.1), whatever layout holds the data.

A layout lists *records* and loads one as an :class:`ObjectImage` (the photo, its object mask, and
the boxes the reference crops to); the sample makers below turn it into the tensors a stage trains
on. Layouts: the plain folder here, Open Images V6 (:mod:`.open_images`) and WebDataset shards
(:mod:`.shards`); :func:`elite_training.prepare_data.open_dataset` picks one from a path.

Plain folder layout::

    <root>/images/<name>.jpg|png|webp     the photos
    <root>/masks/<name>.png               the object's mask (white = object); optional for the global
                                          stage (without it the whole image is the object)
    <root>/captions/<name>.txt            optional: a caption with the standalone word "S" where the
                                          object goes, used as written instead of a template

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
any process, any number of processes and a resumed run see the same samples. A record that cannot
be read is skipped for the next one, counted and logged; it never stops a run.
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
from elite_core.example_concepts import IMAGE_EXTENSIONS

log = logging.getLogger("elite.train.data")

PLACEHOLDER = "S"
BOX_PADDING = 10
MIN_OBJECT_SIDE = 100  # px: the local stage keeps mask boxes at least this tall and wide ...
ASPECT_RANGE = (0.5, 2.0)  # ... and of this aspect ratio
STAGES = ("global", "local")
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


def read_mask(path: str, size: tuple[int, int], threshold: int = 127) -> np.ndarray:
    """The object mask at ``path`` as booleans (channel 0 above ``threshold`` = object), resized
    (nearest) to ``size``."""
    with Image.open(path) as m:
        return np.asarray(m.convert("RGB").getchannel(0).resize(size, Image.NEAREST)) > threshold


def mask_crop_box(mask: np.ndarray | None, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the mask's object padded by 10 px within the image (global stage)."""
    if mask is None or not mask.any():
        return 0, 0, width, height
    rows, cols = np.nonzero(mask)
    return (max(int(cols.min()) - BOX_PADDING, 0), max(int(rows.min()) - BOX_PADDING, 0),
            min(int(cols.max()) + 1 + BOX_PADDING, width), min(int(rows.max()) + 1 + BOX_PADDING, height))


def even_object_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the mask's object as the reference's ``cal_bbox_by_seg`` stores
    it: the extreme rows and columns (inclusive); an odd extent grows by one at the far side if that
    stays within the image size, else at the near side if that stays >= 0; None when the object is
    under 2 px either way."""
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    if (bottom - top) % 2 and bottom + 1 <= height:
        bottom += 1
    if (bottom - top) % 2 and top - 1 >= 0:
        top -= 1
    if (right - left) % 2 and right + 1 <= width:
        right += 1
    if (right - left) % 2 and left - 1 >= 0:
        left -= 1
    if bottom - top < 2 or right - left < 2:
        return None
    return top, bottom, left, right


def fits_local_stage(box: tuple[int, int, int, int] | None) -> bool:
    """The reference's local-stage filter on an even object box."""
    if box is None:
        return False
    height, width = box[1] - box[0], box[3] - box[2]
    return min(height, width) >= MIN_OBJECT_SIDE and ASPECT_RANGE[0] <= height / width <= ASPECT_RANGE[1]


@dataclass
class ObjectImage:
    """One record, loaded: what the sample makers need."""
    image: Image.Image  # RGB
    mask: np.ndarray | None  # (H, W) bool at the image size; the local stage needs it
    crop: tuple[int, int, int, int] | None  # global stage: (left, top, right, bottom), padded
    object_box: tuple[int, int, int, int] | None  # local stage: even (top, bottom, left, right)
    caption: str | None = None  # the record's own caption, else a template


# --------------------------------------------------------------------------- global stage

def _box_blur(image: torch.Tensor, kernel: int) -> torch.Tensor:
    padded = F.pad(image[None], (kernel // 2,) * 4, mode="reflect")
    return F.avg_pool2d(padded, kernel, stride=1)[0]


def _clip_normalise(image: torch.Tensor) -> torch.Tensor:
    return (image - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


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
    return _clip_normalise(image)


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
    return LocalSample(pixels, valid, _clip_normalise(clip_t), _clip_normalise(obj_t),
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


# --------------------------------------------------------------------------- datasets

class ObjectDataset:
    """Records of one layout, made into samples of one stage. Subclasses fill ``records`` and
    implement :meth:`load`; ``skipped`` counts records dropped when the layout opened, ``bad`` the
    records that failed to load since."""

    layout = "records"

    def __init__(self, stage: str = "global", resolution: int = 512, latent_down: int = 8):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.stage, self.resolution, self.latent_down = stage, resolution, latent_down
        self.records: list = []
        self.skipped = self.bad = 0

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record) -> ObjectImage:
        raise NotImplementedError

    def describe(self, record) -> str:
        return str(record)

    def photo_path(self, record) -> str | None:
        """The record's photo file, when it has one of its own."""
        return None

    def load_at(self, index: int) -> tuple[int, ObjectImage]:
        """The first readable record from ``index`` on (wrapping), and its position."""
        for attempt in range(len(self.records)):
            position = (index + attempt) % len(self.records)
            try:
                return position, self.load(self.records[position])
            except (OSError, ValueError, SyntaxError, KeyError) as exc:
                self.bad += 1
                log.warning("skipping %s (%d bad so far): %s", self.describe(self.records[position]), self.bad, exc)
        raise DataError(f"None of the {len(self.records)} records of this {self.layout} dataset can be read.")

    def sample(self, index: int, gen: torch.Generator) -> GlobalSample | LocalSample:
        """Sample ``index`` with the draws of ``gen``; an unreadable record gives way to the next one."""
        _, obj = self.load_at(index)
        if self.stage == "global":
            return global_sample(obj, gen, self.resolution)
        return local_sample(obj, gen, self.resolution, self.latent_down)

    def _finish_opening(self, where: str, expected: str) -> None:
        if self.skipped:
            log.warning("%d record(s) skipped in %s", self.skipped, where)
        if not self.records:
            raise DataError(f"No usable {self.stage}-stage sample in {where}: {expected}")


def read_caption(path: str) -> str | None:
    """A caption file's text, which must hold the standalone word "S"; None without a file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        caption = " ".join(f.read().split())
    if reference_placeholder_index(caption) == 0:
        raise DataError(f"{path}: the caption {caption!r} has no standalone word {PLACEHOLDER!r} where the object goes")
    return caption


class FolderDataset(ObjectDataset):
    """The plain folder layout. Records: (image path, mask path or None, caption or None, box).
    Unreadable images, unusable captions and, for the local stage, images without a mask or with an
    object under 100 px or of aspect outside [0.5, 2] are skipped and counted when the folder opens."""

    layout = "folder"

    def __init__(self, root: str, resolution: int = 512, stage: str = "global", latent_down: int = 8):
        super().__init__(stage, resolution, latent_down)
        images = os.path.join(root, "images")
        if not os.path.isdir(images):
            raise DataError(f"{root!r} has no images/ folder. Put the photos in {images}/ and their object "
                            "masks (white = object, same name, .png) in masks/.")
        for name in sorted(os.listdir(images)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                record = self._record(root, name)
                if record is None:
                    self.skipped += 1
                else:
                    self.records.append(record)
        self._finish_opening(images, f"put {', '.join(IMAGE_EXTENSIONS)} photos there" +
                             (" with masks of objects of at least 100 px in masks/" if stage == "local" else ""))

    def _record(self, root: str, name: str):
        stem = os.path.splitext(name)[0]
        image_path = os.path.join(root, "images", name)
        mask_path = os.path.join(root, "masks", stem + ".png")
        mask_path = mask_path if os.path.isfile(mask_path) else None
        try:
            caption = read_caption(os.path.join(root, "captions", stem + ".txt"))
            with Image.open(image_path) as img:
                img.verify()
            if self.stage == "global":
                return image_path, mask_path, caption, None
            if mask_path is None:
                log.warning("skipping %s for the local stage: it has no mask in masks/", name)
                return None
            with Image.open(image_path) as img:
                box = even_object_box(read_mask(mask_path, ImageOps.exif_transpose(img).size))
        except (OSError, SyntaxError, DataError) as exc:
            log.warning("skipping %s: %s", name, exc)
            return None
        return (image_path, mask_path, caption, box) if fits_local_stage(box) else None

    def describe(self, record) -> str:
        return record[0]

    photo_path = describe

    def load(self, record) -> ObjectImage:
        image_path, mask_path, caption, box = record
        with Image.open(image_path) as img:
            image = ImageOps.exif_transpose(img).convert("RGB")
        mask = read_mask(mask_path, image.size) if mask_path else None
        if self.stage == "global":
            return ObjectImage(image, mask, mask_crop_box(mask, *image.size), None, caption)
        return ObjectImage(image, mask, None, box, caption)


class LocalFolderDataset(FolderDataset):
    """The plain folder layout for the local stage."""

    def __init__(self, root: str, resolution: int = 512, latent_down: int = 8):
        super().__init__(root, resolution, stage="local", latent_down=latent_down)
