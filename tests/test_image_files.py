"""One reading of an image file for the whole pack: a phone photo stored sideways with an EXIF
orientation is turned upright, as ComfyUI's Load Image does, by the nodes' helpers, the trainers'
data, CatVersion's command line and the evaluation alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_elite.elite_core.common.files import open_oriented, read_image, read_mask

REPO = Path(__file__).resolve().parents[1]
ROTATED_90_CW = 6  # EXIF orientation: the stored pixels must be turned 90 degrees clockwise


@pytest.fixture(scope="module")
def sideways(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A 40 x 24 photo stored sideways (orientation 6) and its mask, and the upright pixels (24 wide, 40 tall)."""
    folder = tmp_path_factory.mktemp("exif")
    gen = np.random.default_rng(0)
    stored = gen.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # H 24, W 40 as stored
    stored[:, :8] = 255  # a bright band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = ROTATED_90_CW
    Image.fromarray(stored).save(folder / "photo.png", exif=exif)
    mask = np.zeros((24, 40), dtype=np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(folder / "mask.png", exif=exif)
    upright = np.rot90(stored, k=-1)  # 90 degrees clockwise: the left edge becomes the top
    return folder / "photo.png", folder / "mask.png", upright


def test_read_image_and_read_mask_turn_the_photo_upright(sideways):
    photo, mask, upright = sideways
    image = read_image(str(photo))
    assert image.shape == (1, 40, 24, 3)
    assert torch.equal((image[0] * 255).round().to(torch.uint8), torch.from_numpy(upright.copy()))
    object_mask = read_mask(str(mask))
    assert object_mask.shape == (1, 40, 24)
    assert object_mask[0, :8].min() == 1 and object_mask[0, 8:].max() == 0  # the band is now at the top


def test_the_trainers_and_the_evaluation_see_the_same_upright_photo(sideways, monkeypatch):
    photo, mask, upright = sideways
    monkeypatch.syspath_prepend(str(REPO))
    from elite_training.data.objects import read_mask as training_mask

    assert np.array_equal(np.asarray(open_oriented(str(photo)).convert("RGB")), upright)
    assert training_mask(str(mask), (24, 40)).shape == (40, 24)
    assert training_mask(str(mask), (24, 40))[:8].all() and not training_mask(str(mask), (24, 40))[8:].any()
    from elite_eval.scoring import _pil

    assert np.array_equal(np.asarray(_pil(photo)), upright)
