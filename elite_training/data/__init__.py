"""ELITE's training data: the layouts a ``--data`` folder may have (plain folder, Open Images V6,
WebDataset shards), each listing records that the sample makers of :mod:`.samples` turn into the
tensors a stage trains on (docs/reference/elite.md §9.1)."""

from __future__ import annotations

import os

try:  # every layout resamples with OpenCV, as the reference does
    import cv2  # noqa: F401
except ImportError as exc:
    raise ImportError("ELITE's training data needs OpenCV: pip install -r requirements-train.txt "
                      "(it installs opencv-python-headless)") from exc

from .folder import FolderDataset, ObjectDataset
from .objects import DataError
from .open_images import OpenImagesDataset, is_open_images
from .shards import ShardDataset, is_shard_set

LAYOUTS = ("auto", "folder", "openimages", "shards")


def open_dataset(root: str, stage: str = "global", resolution: int = 512, latent_down: int = 8,
                 layout: str = "auto", split: str = "test", clamp_object_resize: bool = False) -> ObjectDataset:
    """The dataset at ``root``: a shard set (``shards.json``), Open Images V6 (``annotations/``) or a
    plain folder (``images/``), as ``layout`` says or as found. ``clamp_object_resize``: the local
    stage's masked object is clamped to 0-255 after its cubic resize instead of wrapping around as in
    the reference (docs/reference/data-pipeline.md §3)."""
    if not os.path.isdir(root):
        raise DataError(f"No data folder {root!r}.")
    if layout == "auto":
        layout = "shards" if is_shard_set(root) else "openimages" if is_open_images(root) else "folder"
    if layout == "shards":
        dataset = ShardDataset(root, resolution, stage, latent_down)
    elif layout == "openimages":
        dataset = OpenImagesDataset(root, resolution, stage, latent_down, split)
    else:
        dataset = FolderDataset(root, resolution, stage, latent_down)
    dataset.clamp_object_resize = clamp_object_resize
    return dataset
