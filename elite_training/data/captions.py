"""Plain caption data for regularised joint training (the Taming Encoder's option): photos with their
own captions, no concept, no placeholder.

    <root>/images/<name>.jpg|png|webp
    <root>/captions/<name>.txt          the caption (required; images without one are skipped)

A sample is the photo's centre square, bicubic to the training resolution, in [-1, 1], and its
caption. It draws nothing: which photo comes from the trainer's seeded order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from elite_core.common.files import IMAGE_EXTENSIONS, open_oriented

from .objects import DataError

log = logging.getLogger("elite.train.data")


@dataclass
class CaptionSample:
    pixels: torch.Tensor  # (3, r, r) in [-1, 1]
    caption: str


class CaptionDataset:
    def __init__(self, root: str, resolution: int = 512):
        images, captions = os.path.join(root, "images"), os.path.join(root, "captions")
        if not os.path.isdir(images) or not os.path.isdir(captions):
            raise DataError(f"--plain-data {root!r} needs images/ and captions/ (<name>.txt beside each <name>.jpg).")
        self.resolution, self.items, self.skipped, self.bad = resolution, [], 0, 0
        for name in sorted(os.listdir(images)):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            caption_path = os.path.join(captions, os.path.splitext(name)[0] + ".txt")
            if not os.path.isfile(caption_path):
                self.skipped += 1
                continue
            with open(caption_path, encoding="utf-8") as f:
                self.items.append((os.path.join(images, name), " ".join(f.read().split())))
        if self.skipped:
            log.warning("%d photo(s) without a caption skipped in %s", self.skipped, images)
        if not self.items:
            raise DataError(f"No captioned photos in {root!r}: put <name>.txt captions in {captions}/.")

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int) -> CaptionSample:
        for attempt in range(len(self.items)):
            path, caption = self.items[(index + attempt) % len(self.items)]
            try:
                image = open_oriented(path).convert("RGB")
            except (OSError, SyntaxError) as exc:
                self.bad += 1
                log.warning("skipping %s (%d bad so far): %s", path, self.bad, exc)
                continue
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            square = image.crop((left, top, left + side, top + side)).resize((self.resolution,) * 2, Image.BICUBIC)
            pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
            return CaptionSample(pixels, caption)
        raise DataError("None of the --plain-data photos can be read.")
