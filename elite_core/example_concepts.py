"""The example concepts shipped with the pack (``assets/concepts/``: ELITE's own test images, Apache-2.0,
see the NOTICE there), so the example workflows run without placing files; and the image-file helpers
the pack reads every such file with (``read_image``, ``read_mask``, ``IMAGE_EXTENSIONS``)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "concepts")
EXAMPLES = {"cat": "cat", "dog": "dog", "flower": "flower"}
# the photo files the pack's folders are read for (training data, CatVersion photos, benchmarks)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def read_image(path: str) -> torch.Tensor:
    """An image file as IMAGE (1, H, W, 3) in [0, 1]."""
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


def read_mask(path: str) -> torch.Tensor:
    """A mask file (white on the object, as ELITE's ``_bg.png`` files) as MASK (1, H, W), 1 on the object."""
    with Image.open(path) as m:
        return torch.from_numpy((np.asarray(m.convert("RGB"))[..., 0] > 127).astype(np.float32))[None]


def load_example(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (1, H, W, 3) in [0, 1] and MASK (1, H, W), 1 on the object, of an example concept."""
    if name not in EXAMPLES:
        raise ValueError(f"Unknown example concept {name!r}; the pack ships {', '.join(EXAMPLES)}.")
    stem = os.path.join(ASSETS, EXAMPLES[name])
    return read_image(stem + ".jpg"), read_mask(stem + "_mask.png")
