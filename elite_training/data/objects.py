"""One training record, loaded (:class:`ObjectImage`), and the box rules every layout applies to
it: the global stage's padded object crop and the local stage's even mask box and size filter
(the reference's ``datasets.py`` and ``data_scripts/cal_bbox_by_seg.py``; docs/reference/elite.md §9.1)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from elite_core.common.files import open_oriented

BOX_PADDING = 10
MIN_OBJECT_SIDE = 100  # px: the local stage keeps mask boxes at least this tall and wide ...
ASPECT_RANGE = (0.5, 2.0)  # ... and of this aspect ratio
STAGES = ("global", "local")


class DataError(ValueError):
    """The dataset cannot be used; the message says what to fix."""


def read_mask(path: str, size: tuple[int, int], threshold: int = 127) -> np.ndarray:
    """The object mask at ``path`` as booleans (channel 0 above ``threshold`` = object), resized to
    ``size`` (width, height) with OpenCV's nearest neighbour, as the reference's ``__getitem__`` and
    ``cal_bbox_by_seg`` do (it samples source pixel floor(x * scale), not PIL's pixel centres)."""
    mask = np.asarray(open_oriented(path).convert("RGB").getchannel(0))
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST)
    return mask > threshold


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

