"""The Open Images V6 layout the reference trains on (docs/reference/elite.md §9.1), and its mask-box step.

    <root>/images/<split>/<ImageID>.jpg
    <root>/annotations/<split>-annotations-bbox.csv                  global stage: one object per row
    <root>/annotations/<split>-annotations-object-segmentation.csv   local stage: one object per mask
    <root>/segs/<split>/<MaskPath>.png                               the masks, all in one folder
    <root>/segs/<split>_bbox_dict.json                               written by `bboxes` (below)

Global stage: one record per box row with a normalised area in [0.02, 0.8]; its crop is the box in
pixels padded by up to 10 px (the reference's arithmetic, truncating to whole pixels). Local stage:
one record per mask row whose mask has a box in the bbox dict of at least 100 px each way and an
aspect ratio in [0.5, 2]. Rows are taken label by label, in the order labels first appear, as the
reference's ``groupby`` walk does. Rows whose image is missing are skipped and counted.

The reference keeps its mask boxes in a pickled ``.npy``; this pack writes the same boxes as JSON
(``python -m elite_training.prepare_data bboxes <root>``) and never unpickles anything.
"""

from __future__ import annotations

import csv
import json
import logging
import os

from elite_core.common.files import open_image, write_atomically

from .folder import ObjectDataset
from .objects import DataError, ObjectImage, even_object_box, fits_local_stage, read_mask

log = logging.getLogger("elite.train.data")

AREA_RANGE = (0.02, 0.8)  # the global stage's normalised box areas


def is_open_images(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "annotations")) and os.path.isdir(os.path.join(root, "images"))


def bbox_dict_path(root: str, split: str) -> str:
    return os.path.join(root, "segs", f"{split}_bbox_dict.json")


def _image_of_mask(mask_name: str) -> str:
    return mask_name.split("_")[0] + ".jpg"


def write_bbox_dict(root: str, split: str = "test") -> tuple[int, int]:
    """The reference's ``cal_bbox_by_seg``: every mask of ``segs/<split>/``, resized (nearest) to its
    image, channel 0 non-zero = object, gives its even box (top, bottom, left, right); masks without
    an image or with an object under 2 px are left out. Returns (boxes written, masks left out)."""
    seg_dir, image_dir = os.path.join(root, "segs", split), os.path.join(root, "images", split)
    if not os.path.isdir(seg_dir):
        raise DataError(f"No mask folder {seg_dir}: put the Open Images segmentation PNGs of the {split} split there.")
    boxes, left_out = {}, 0
    for name in sorted(os.listdir(seg_dir)):
        try:
            with open_image(os.path.join(image_dir, _image_of_mask(name))) as img:
                size = img.size
            box = even_object_box(read_mask(os.path.join(seg_dir, name), size, threshold=0))
        except (OSError, SyntaxError) as exc:
            log.warning("leaving out %s: %s", name, exc)
            box = None
        if box is None:
            left_out += 1
        else:
            boxes[name] = list(box)
    path = bbox_dict_path(root, split)

    def write(partial: str) -> None:
        with open(partial, "w") as f:
            json.dump(boxes, f)

    write_atomically(path, write)
    log.info("%d mask boxes written to %s (%d masks left out)", len(boxes), path, left_out)
    return len(boxes), left_out


def _rows_by_label(path: str) -> list[dict]:
    """The CSV's rows, label by label in the order labels first appear (the reference's groupby walk)."""
    if not os.path.isfile(path):
        raise DataError(f"Missing {path}: the Open Images V6 annotation CSV.")
    groups: dict[str, list[dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["LabelName"], []).append(row)
    return [row for rows in groups.values() for row in rows]


class OpenImagesDataset(ObjectDataset):
    layout = "Open Images"

    def __init__(self, root: str, resolution: int = 512, stage: str = "global", latent_down: int = 8,
                 split: str = "test"):
        super().__init__(stage, resolution, latent_down)
        self.root, self.split = root, split
        self.image_dir = os.path.join(root, "images", split)
        present = set(os.listdir(self.image_dir)) if os.path.isdir(self.image_dir) else set()
        annotations = os.path.join(root, "annotations")
        if stage == "global":
            for row in _rows_by_label(os.path.join(annotations, f"{split}-annotations-bbox.csv")):
                x0, x1, y0, y1 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
                if not AREA_RANGE[0] <= (x1 - x0) * (y1 - y0) <= AREA_RANGE[1]:
                    continue
                if row["ImageID"] + ".jpg" not in present:
                    self.skipped += 1
                    continue
                self.records.append((row["ImageID"], x0, x1, y0, y1))
        else:
            dict_path = bbox_dict_path(root, split)
            if not os.path.isfile(dict_path):
                raise DataError(f"No {dict_path}: run `python -m elite_training.prepare_data bboxes {root}` first "
                                "(the reference's mask-box step).")
            with open(dict_path) as f:
                boxes = json.load(f)
            for row in _rows_by_label(os.path.join(annotations, f"{split}-annotations-object-segmentation.csv")):
                name = row["MaskPath"]
                box = boxes.get(name)
                if box is None or not fits_local_stage(tuple(box)):
                    continue
                if _image_of_mask(name) not in present:
                    self.skipped += 1
                    continue
                self.records.append((name, *box))
        self._finish_opening(root, f"check the {split} split's images/, annotations/ and segs/ folders")

    def describe(self, record) -> str:
        return record[0]

    def photo_path(self, record) -> str:
        name = record[0] + ".jpg" if self.stage == "global" else _image_of_mask(record[0])
        return os.path.join(self.image_dir, name)

    def load(self, record) -> ObjectImage:
        if self.stage == "global":
            _, x0, x1, y0, y1 = record
            with open_image(self.photo_path(record)) as img:
                image = img.convert("RGB")
            return ObjectImage(image, None, reference_crop(image.size, x0, x1, y0, y1), None)
        name, *box = record
        with open_image(self.photo_path(record)) as img:
            image = img.convert("RGB")
        mask = read_mask(os.path.join(self.root, "segs", self.split, name), image.size, threshold=0)
        return ObjectImage(image, mask, None, tuple(box))


def reference_crop(size: tuple[int, int], x0: float, x1: float, y0: float, y1: float) -> tuple[int, int, int, int]:
    """The reference's global crop (left, top, right, bottom) from a normalised box: scaled to pixels,
    padded by up to 10 px within the image, truncated to whole pixels."""
    width, height = size
    x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    return (int(x0 - min(10, x0)), int(y0 - min(10, y0)), int(x1 + min(10, width - x1)), int(y1 + min(10, height - y1)))
