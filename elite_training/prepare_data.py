"""Open ELITE training data in any of its layouts, and prepare it.

    python -m elite_training.prepare_data bboxes <open-images-root> [--split test]
        the reference's mask-box step (cal_bbox_by_seg) for the local stage
    python -m elite_training.prepare_data shards <data> <out> --stage global|local [--samples-per-shard 1000]
        WebDataset shards from a folder or an Open Images layout, for one stage

``--data`` of the trainer takes any of the three layouts; :func:`open_dataset` tells them apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .elite_data import STAGES, DataError, FolderDataset, ObjectDataset
from .open_images import OpenImagesDataset, is_open_images, write_bbox_dict
from .shards import ShardDataset, is_shard_set, write_shards

LAYOUTS = ("auto", "folder", "openimages", "shards")
log = logging.getLogger("elite.train.data")


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


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m elite_training.prepare_data", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    boxes = commands.add_parser("bboxes", help="write segs/<split>_bbox_dict.json of an Open Images layout")
    boxes.add_argument("root")
    boxes.add_argument("--split", default="test")
    shards = commands.add_parser("shards", help="convert a folder or Open Images layout to WebDataset shards")
    shards.add_argument("data")
    shards.add_argument("out")
    shards.add_argument("--stage", choices=STAGES, required=True)
    shards.add_argument("--layout", choices=("auto", "folder", "openimages"), default="auto")
    shards.add_argument("--split", default="test")
    shards.add_argument("--samples-per-shard", type=int, default=1000)
    args = p.parse_args(argv)
    try:
        if args.command == "bboxes":
            write_bbox_dict(args.root, args.split)
        else:
            if os.path.abspath(args.out) == os.path.abspath(args.data):
                raise DataError("Write the shards to a folder of their own, not into the source data.")
            dataset = open_dataset(args.data, args.stage, layout=args.layout, split=args.split)
            write_shards(dataset, args.out, args.samples_per_shard)
    except DataError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
