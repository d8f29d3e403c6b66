"""Prepare ELITE training data (the layouts are opened by :func:`elite_training.data.open_dataset`).

    python -m elite_training.prepare_data bboxes <open-images-root> [--split test]
        the reference's mask-box step (cal_bbox_by_seg) for the local stage
    python -m elite_training.prepare_data shards <data> <out> --stage global|local [--samples-per-shard 1000]
        WebDataset shards from a folder or an Open Images layout, for one stage
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from elite_core.common.checks import whole_number
from elite_core.common.files import disk_full

from .data import open_dataset
from .data.objects import STAGES, DataError
from .data.open_images import write_bbox_dict
from .data.shards import write_shards

log = logging.getLogger("elite.train.data")


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
    shards.add_argument("--samples-per-shard", type=whole_number(1), default=1000)
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
    except OSError as exc:
        full = disk_full(exc, args.root if args.command == "bboxes" else args.out)
        if full is None:
            raise
        log.error("%s", full)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
