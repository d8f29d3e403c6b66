"""Cost of CatVersion on prompt encoding: a real-size SD1.x CLIP-L text encoder (random weights)
with and without a CatVersion prefix, CPU.

The two configurations take turns in each round (a plain CLIP and its CatVersion clone share one set
of weights, as in a workflow). Each turn first encodes once untimed, so ComfyUI has swapped the
configuration in, then times ``--repeat`` encodes and keeps the fastest. The script prints the
median over rounds of each round's ratio patched / plain, and the ratio of the best times, measured
in this one run; also the time of a turn's first encode (the swap included) relative to the plain
encode, which a workflow pays once per prompt it switches between the two. The prefix is random
with the official shape (layers 9-11, one row) unless ``--adapter`` names a CatVersion file.

    .cache/venv/bin/python bench/bench_catversion.py [--rounds 15] [--adapter teddybear.bin]

This is a benchmark, not a test: it asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPT = "teddybear on the beach, golden hour, detailed photo"


def setup_comfy():
    sys.path.insert(0, os.environ.get("ELITE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui")))
    # the repository root, for elite_test_pack: after ComfyUI, whose nodes.py the
    # repository's nodes/ must not shadow
    sys.path.insert(1, str(REPO))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--adapter", help="a CatVersion .bin/.safetensors (default: a random prefix)")
    args = parser.parse_args(argv)
    setup_comfy()
    from elite_test_pack.pack_import import elite_core_module
    from elite_test_pack.tiny_models import build_tiny_clip

    catversion = elite_core_module("catversion.prefix")
    adapter_patch = elite_core_module("comfyui.catversion")
    if args.adapter:
        prefix = catversion.read_catversion_file(args.adapter)
    else:
        gen = torch.Generator().manual_seed(1)
        prefix = catversion.CatVersionPrefix(layers=catversion.OFFICIAL_LAYERS, keys=torch.randn(3, 1, 768, generator=gen),
                                             values=torch.randn(3, 1, 768, generator=gen), name="random prefix")
    plain = build_tiny_clip(seed=7, real_size=True)
    patched = adapter_patch.apply_catversion(plain, prefix, 1.0)
    tokens = plain.tokenize(PROMPT)
    configs = {"plain": plain, "catversion": patched}

    def timed(name) -> float:
        start = time.perf_counter()
        configs[name].encode_from_tokens(tokens)
        return time.perf_counter() - start

    for name in configs:  # warm-up
        timed(name)
    times = {name: [] for name in configs}
    switches = []
    for round_index in range(args.rounds):
        for name in (("plain", "catversion") if round_index % 2 == 0 else ("catversion", "plain")):
            first = timed(name)  # swaps this configuration in
            times[name].append(min(timed(name) for _ in range(args.repeat)))
            switches.append(first / times[name][-1])
    report = {
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "prefix": prefix.name,
        "encode_ratio_catversion_to_plain": {
            "median": round(statistics.median(c / p for c, p in zip(times["catversion"], times["plain"])), 3),
            "best": round(min(times["catversion"]) / min(times["plain"]), 3),
        },
        "first_encode_after_a_switch_to_steady_encode": round(statistics.median(switches), 3),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
