"""Cost of ELITE on one CFG step of a real-size SD1.5 UNet (random weights) at 512x512 (CUDA when present, else CPU).

Four configurations of one and the same UNet: unpatched, ELITE global only (the 32 attn2 K/V
weights replaced), ELITE global + local (λ = 0.8), and the same recording the attention map (ELITE
Attention Patch's attention_map on; off, nothing is recorded and nothing extra runs). Each timed step runs on the same weights in
memory (the configuration is patched in before and unpatched after it, outside the timing), and the
configurations take turns (``bench/rounds.py``), so the ratios show ELITE's cost and not where each
copy happens to live. The script prints each round's time ratio to unpatched, summarised by its
median, quartiles and range, measured in this one run. Peak memory is measured in a fresh process
per configuration (peak resident set during the step, as a ratio to unpatched; Linux, CPU only).
Whole steps are the cross-check; the extra attention alone is timed site by site, far more
steadily, by bench_attn2.py.

    .cache/venv/bin/python bench/bench_step.py [--rounds 3] [--size 512] [--threads 2] [--skip-memory | --memory-only]

This is a benchmark, not a test: it asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from rounds import alternate, ratios, spread
from sd15_setup import build_inputs, configure, describe, one_step, setup_comfy

CONFIGS = ("unpatched", "global", "global+local", "global+local+map")


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(config: str, size: int, threads: int | None) -> None:
    device = setup_comfy(threads)
    model, concept, positive, context = build_inputs(device)
    model = configure(model, concept, positive, config)
    one_step(model, context, size)  # warm-up: lazy caches, allocator
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    one_step(model, context, size)
    print(json.dumps({"config": config, "peak_kb": _rss_kb("VmHWM")}))


def measure_peak(config: str, size: int, threads: int | None) -> int:
    command = [sys.executable, __file__, "--memory-child", config, "--size", str(size)]
    # glibc's malloc would keep freed blocks of varying sizes resident and move its mmap threshold as
    # the step runs, so the peak would wander by ±2 % from one process to the next; a fixed threshold
    # returns every large block to the system when freed, and the peak is that of the live tensors.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    done = subprocess.run(command + (["--threads", str(threads)] if threads else []),
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory ratios")
    parser.add_argument("--memory-child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.size, args.threads)
        return

    if args.memory_only:
        print_memory(args.size, args.threads)
        return
    device = setup_comfy(args.threads)
    base, concept, positive, context = build_inputs(device)
    models = {config: configure(base, concept, positive, config) for config in CONFIGS}  # clones of one UNet
    # one warm-up round (and the lazy local K/V projections), then rounds in turn, who goes first rotating
    times = alternate({config: (lambda _round, model=models[config]: one_step(model, context, args.size))
                       for config in CONFIGS}, args.rounds)
    print(f"one CFG step (batch 2), SD1.5 layout, {args.size}x{args.size}, {describe(device)}, "
          f"{args.rounds} alternating rounds, time ratios per round")
    for config in CONFIGS[1:]:
        print(f"  {config:<17} / unpatched: {spread(ratios(times, config, 'unpatched')).describe()}")
    print(f"  attention map on / off: {spread(ratios(times, 'global+local+map', 'global+local')).describe()}")
    print("  (the extra attention alone, site by site: bench/bench_attn2.py)")
    if not args.skip_memory:
        print_memory(args.size, args.threads)


def print_memory(size: int, threads: int | None) -> None:
    if torch.cuda.is_available():
        print("  peak memory: measured on the CPU only (the resident set)")
        return
    peaks = {config: measure_peak(config, size, threads) for config in CONFIGS}
    print(f"  peak RSS of one {size}x{size} step, a fresh process each: unpatched {peaks['unpatched'] / 2**20:.2f} GiB")
    for config in CONFIGS:
        print(f"  {config:<17} peak RSS ratio {peaks[config] / peaks['unpatched']:.3f}x")


if __name__ == "__main__":
    main()
