"""The plain-folder layout, and what every layout shares (:class:`ObjectDataset`): records listed
when the data opens, loaded one at a time, made into samples of one stage.

Plain folder layout::

    <root>/images/<name>.jpg|png|webp     the photos
    <root>/masks/<name>.png               the object's mask (white = object); optional for the global
                                          stage (without it the whole image is the object)
    <root>/captions/<name>.txt            optional: a caption with the standalone word "S" where the
                                          object goes, used as written instead of a template

Other layouts: Open Images V6 (:mod:`.open_images`) and WebDataset shards (:mod:`.shards`);
:func:`elite_training.data.open_dataset` picks one from a path. A record that cannot be read is
skipped for the next one, counted and logged; it never stops a run.
"""

from __future__ import annotations

import logging
import os

import torch

from elite_core.common.checks import MIN_IMAGE_SIDE
from elite_core.common.files import IMAGE_EXTENSIONS, open_image, open_oriented

from .objects import STAGES, DataError, ObjectImage, even_object_box, fits_local_stage, mask_crop_box, read_mask
from .samples import PLACEHOLDER, GlobalSample, LocalSample, global_sample, local_sample, reference_placeholder_index

log = logging.getLogger("elite.train.data")


class ObjectDataset:
    """Records of one layout, made into samples of one stage. Subclasses fill ``records`` and
    implement :meth:`load`; ``skipped`` counts records dropped when the layout opened, ``bad`` the
    records that failed to load since."""

    layout = "records"
    clamp_object_resize = False  # local stage: clamp the masked object's cubic resize instead of wrapping (open_dataset)

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
                return position, usable(self.load(self.records[position]))
            except (OSError, ValueError, SyntaxError, KeyError) as exc:
                self.bad += 1
                log.warning("skipping %s (%d bad so far): %s", self.describe(self.records[position]), self.bad, exc)
        raise DataError(f"None of the {len(self.records)} records of this {self.layout} dataset can be read.")

    def sample(self, index: int, gen: torch.Generator) -> GlobalSample | LocalSample:
        """Sample ``index`` with the draws of ``gen``; an unreadable record gives way to the next one."""
        _, obj = self.load_at(index)
        if self.stage == "global":
            return global_sample(obj, gen, self.resolution)
        return local_sample(obj, gen, self.resolution, self.latent_down, self.clamp_object_resize)

    def _finish_opening(self, where: str, expected: str) -> None:
        if self.skipped:
            log.warning("%d record(s) skipped in %s", self.skipped, where)
        if not self.records:
            raise DataError(f"No usable {self.stage}-stage sample in {where}: {expected}")


def too_small(size: tuple[int, int]) -> str:
    return (f"the photo is {size[0]}x{size[1]} pixels, under the {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} every node and "
            "trainer of the pack needs: there is no picture of an object in it")


def usable(obj: ObjectImage) -> ObjectImage:
    """``obj`` when its photo has pixels enough to be a picture (the nodes' rule)."""
    if min(obj.image.size) < MIN_IMAGE_SIDE:
        raise DataError(too_small(obj.image.size))
    return obj


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
            with open_image(image_path) as img:
                if min(img.size) < MIN_IMAGE_SIDE:
                    raise DataError(too_small(img.size))
                img.verify()
            if self.stage == "global":
                return image_path, mask_path, caption, None
            if mask_path is None:
                log.warning("skipping %s for the local stage: it has no mask in masks/", name)
                return None
            box = even_object_box(read_mask(mask_path, open_oriented(image_path).size))
        except (OSError, SyntaxError, DataError) as exc:
            log.warning("skipping %s: %s", name, exc)
            return None
        return (image_path, mask_path, caption, box) if fits_local_stage(box) else None

    def describe(self, record) -> str:
        return record[0]

    photo_path = describe

    def load(self, record) -> ObjectImage:
        image_path, mask_path, caption, box = record
        image = open_oriented(image_path).convert("RGB")
        mask = read_mask(mask_path, image.size) if mask_path else None
        if self.stage == "global":
            return ObjectImage(image, mask, mask_crop_box(mask, *image.size), None, caption)
        return ObjectImage(image, mask, None, box, caption)


class LocalFolderDataset(FolderDataset):
    """The plain folder layout for the local stage."""

    def __init__(self, root: str, resolution: int = 512, latent_down: int = 8):
        super().__init__(root, resolution, stage="local", latent_down=latent_down)
