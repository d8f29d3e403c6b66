"""ELITE's training data: the layouts a ``--data`` folder may have (plain folder, Open Images V6,
WebDataset shards), each listing records that the sample makers of :mod:`.samples` turn into the
tensors a stage trains on (docs/reference/elite.md §9.1)."""

from __future__ import annotations

import os

from .folder import FolderDataset, ObjectDataset
from .objects import DataError
from .open_images import OpenImagesDataset, is_open_images
from .shards import ShardDataset, is_shard_set

LAYOUTS = ("auto", "folder", "openimages", "shards")


def open_dataset(root: str, stage: str = "global", resolution: int = 512, latent_down: int = 8,
                 layout: str = "auto", split: str = "test") -> ObjectDataset:
    """The dataset at ``root``: a shard set (``shards.json``), Open Images V6 (``annotations/``) or a
    plain folder (``images/``), as ``layout`` says or as found."""
    if not os.path.isdir(root):
        raise DataError(f"No data folder {root!r}.")
    if layout == "auto":
        layout = "shards" if is_shard_set(root) else "openimages" if is_open_images(root) else "folder"
    if layout == "shards":
        return ShardDataset(root, resolution, stage, latent_down)
    if layout == "openimages":
        return OpenImagesDataset(root, resolution, stage, latent_down, split)
    return FolderDataset(root, resolution, stage, latent_down)
