"""The example concepts shipped with the pack (``assets/concepts/``: ELITE's own test images, Apache-2.0,
see the NOTICE there), so the example workflows run without placing files."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "concepts")
EXAMPLES = {"cat": "cat", "dog": "dog", "flower": "flower"}


def load_example(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (1, H, W, 3) in [0, 1] and MASK (1, H, W), 1 on the object, of an example concept."""
    if name not in EXAMPLES:
        raise ValueError(f"Unknown example concept {name!r}; the pack ships {', '.join(EXAMPLES)}.")
    stem = os.path.join(ASSETS, EXAMPLES[name])
    with Image.open(stem + ".jpg") as img:
        image = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
    with Image.open(stem + "_mask.png") as m:
        mask = torch.from_numpy((np.asarray(m.convert("RGB"))[..., 0] > 127).astype(np.float32))[None]
    return image, mask
