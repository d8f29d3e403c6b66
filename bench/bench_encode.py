"""Cost of ELITE Encoder against one CLIP ViT-L/14 forward (real-size random weights, CPU by default).

Three timings, taking turns in each round so that the machine's drift hits all of them alike:

* ``clip``: one CLIP ViT-L/14 vision forward of one 224x224 image with all hidden states (what
  ELITE asks of CLIP vision), nothing else;
* ``global``: ELITE Encoder with the global mapper on a 512x512 concept image (preprocessing, CLIP,
  the global mapper);
* ``global+local``: the same with the local mapper and an object mask (CLIP sees the whole image and
  the object image; the local mapper runs too).

It prints, for ``global`` and ``global+local``, the median over rounds of each round's ratio to
``clip`` and the ratio of the best times, measured in this one run. Mappers are written in the official widths
(1024 -> 1024 -> 768) to a temporary
models/elite folder and loaded by the pack's own loaders.

    .cache/venv/bin/python bench/bench_encode.py [--rounds 5] [--threads N]

This is a benchmark, not a test: it asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("clip", "global", "global+local")


def setup_comfy(models_dir: str):
    comfy_dir = os.environ.get("ELITE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui"))
    sys.path.insert(0, comfy_dir)
    # the repository root, for elite_test_pack: after ComfyUI, whose nodes.py the
    # repository's nodes/ must not shadow
    sys.path.insert(1, str(REPO))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401
    import folder_paths

    from elite_test_pack.pack_import import elite_core_module

    adapter = elite_core_module("comfyui.elite")
    adapter.register_model_folder()
    folder_paths.add_model_folder_path("elite", models_dir, is_default=True)
    return comfy_dir, adapter


def real_size_clip_vision(comfy_dir: str, seed: int = 0):
    """CLIP ViT-L/14 vision (ComfyUI's own config and classes), seeded random weights, fp32."""
    import comfy.clip_vision

    from elite_test_pack.tiny_models import seeded_init_

    clip_vision = comfy.clip_vision.ClipVisionModel(os.path.join(comfy_dir, "comfy", "clip_vision_config_vitl.json"))
    clip_vision.model.to(torch.float32)
    seeded_init_(clip_vision.model, seed, std=0.02)
    return clip_vision


def write_official_size_mappers(folder: str) -> tuple[str, str]:
    from elite_test_pack.pack_import import elite_core_module
    from elite_test_pack.tiny_models import tiny_mapper_state_dict

    checkpoint = elite_core_module("elite.checkpoint")
    names = []
    for seed, kind in ((10, "global"), (11, "local")):
        state = tiny_mapper_state_dict(seed, input_dim=1024, hidden_dim=1024, model_channels=320)
        name = f"bench_{kind}_mapper.safetensors"
        checkpoint.save_mapper_safetensors(state, os.path.join(folder, name), kind=kind)
        names.append(name)
    return names[0], names[1]


def concept_inputs(size: int = 512):
    gen = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, (1, size, size, 3), generator=gen).float() / 255.0
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).float().unsqueeze(0)
    return image, mask


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="elite-bench-") as models_dir:
        comfy_dir, adapter = setup_comfy(models_dir)
        clip_vision = real_size_clip_vision(comfy_dir)
        global_name, local_name = write_official_size_mappers(models_dir)
        global_mapper = adapter.load_global_mapper(global_name)
        local_mapper = adapter.load_local_mapper(local_name)
        image, mask = concept_inputs()
        pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))

        def run(config: str):
            if config == "clip":
                with torch.no_grad():
                    clip_vision.model(pixel_values=pixels, intermediate_output="all")
            elif config == "global":
                adapter.encode_concept(clip_vision, global_mapper, image)
            else:
                adapter.encode_concept(clip_vision, global_mapper, image, local_mapper, mask)

        for config in CONFIGS:  # warm-up: first-call allocations and lazy set-up
            run(config)
        times = {config: [] for config in CONFIGS}
        for round_index in range(args.rounds):
            order = CONFIGS[round_index % 3:] + CONFIGS[:round_index % 3]  # no fixed position in a round
            for config in order:
                start = time.perf_counter()
                run(config)
                times[config].append(time.perf_counter() - start)

    report = {
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "seconds_one_clip_forward_median": round(statistics.median(times["clip"]), 3),
        # Each round's own ratio (paired), then the median and best over rounds.
        "ratios_to_one_clip_forward": {
            config: {"median": round(statistics.median(t / c for t, c in zip(times[config], times["clip"])), 3),
                     "best": round(min(times[config]) / min(times["clip"]), 3)}
            for config in CONFIGS[1:]
        },
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
