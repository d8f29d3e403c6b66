"""The example concepts shipped with the pack (``assets/concepts/``: ELITE's own test images, Apache-2.0,
see the NOTICE there), so the example workflows run without placing files."""

from __future__ import annotations

import os

import torch

from ..common.files import read_image, read_mask

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "assets", "concepts")
EXAMPLES = {"cat": "cat", "dog": "dog", "flower": "flower"}


def load_example(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (1, H, W, 3) in [0, 1] and MASK (1, H, W), 1 on the object, of an example concept."""
    if name not in EXAMPLES:
        raise ValueError(f"Unknown example concept {name!r}; the pack ships {', '.join(EXAMPLES)}.")
    stem = os.path.join(ASSETS, EXAMPLES[name])
    return read_image(stem + ".jpg"), read_mask(stem + "_mask.png")
