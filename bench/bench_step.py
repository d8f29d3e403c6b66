"""Cost of ELITE on one CFG step of a real-size SD1.5 UNet (random weights) at 512x512, on the CPU.

Four configurations of one and the same UNet: unpatched, ELITE global only (the 32 attn2 K/V
weights replaced), ELITE global + local (λ = 0.8), and the same recording the attention map (ELITE
Attention Patch's attention_map on; off, nothing is recorded and nothing extra runs). Each timed step runs on the same weights in
memory (the configuration is patched in before and unpatched after it, outside the timing), and the
configurations take turns (``bench/rounds.py``), so the ratios show ELITE's cost and not where each
copy happens to live. The script prints each round's time ratio to unpatched, summarised by its
median, quartiles and range, measured in this one run.
Peak memory is measured in a fresh process per configuration (peak resident set during the step;
Linux only).

    .cache/venv/bin/python bench/bench_step.py [--rounds 3] [--size 512]

This is a benchmark, not a test: it asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from rounds import alternate, ratios, spread

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("unpatched", "global", "global+local", "global+local+map")


def setup_comfy():
    sys.path.insert(0, os.environ.get("ELITE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui")))
    # the repository root, for elite_test_pack: after ComfyUI, whose nodes.py the
    # repository's nodes/ must not shadow
    sys.path.insert(1, str(REPO))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401


def build_inputs(seed: int = 0):
    """A real-size SD1.5 UNet, a random concept with official mapper widths, and CFG contexts."""
    import comfy.model_patcher
    import comfy.supported_models

    from elite_test_pack.pack_import import elite_core_module
    from elite_test_pack.tiny_models import seeded_init_, tiny_sd15_unet_config

    concept_mod, mappers, sites = (elite_core_module(m) for m in ("elite.concept", "elite.mappers", "elite.sites"))
    cpu = torch.device("cpu")
    sd15 = comfy.supported_models.SD15({**tiny_sd15_unet_config(), "model_channels": 320})
    sd15.set_inference_dtype(torch.float32, None)
    base = sd15.get_model({}, "", device=cpu)
    seeded_init_(base.diffusion_model, seed, std=0.02)
    model = comfy.model_patcher.ModelPatcher(base, cpu, cpu)

    gen = torch.Generator().manual_seed(seed + 1)

    def random_kv():
        return {s.ckpt_prefix: (torch.randn(c, 768, generator=gen) * 0.02, torch.randn(c, 768, generator=gen) * 0.02)
                for s, c in zip(sites.SD1_ATTN2_SITES, mappers.OFFICIAL_WIDTHS.kv_dims)}

    site_kv = mappers.SiteKV(random_kv())
    local = concept_mod.LocalBranch(tokens=torch.randn(1, 256, 768, generator=gen), kv=site_kv.weights,
                                    models=(comfy.model_patcher.ModelPatcher(site_kv, cpu, cpu),))
    concept = concept_mod.ELITEConcept(words=torch.randn(1, 5, 768, generator=gen), global_kv=random_kv(), local=local)
    positive_ctx, negative_ctx = torch.randn(2, 1, 77, 768, generator=gen)
    positive = [[positive_ctx, {elite_core_module("comfyui.elite_patch").PLACEHOLDER_KEY: positive_ctx[:, 5].clone()}]]
    return model, concept, positive, torch.cat([negative_ctx, positive_ctx])


def configure(model, concept, positive, config: str):
    from elite_test_pack.pack_import import elite_core_module

    adapter = elite_core_module("comfyui.elite_patch")
    if config == "global":
        return adapter.apply_global_kv(model, concept)
    if config == "global+local":
        return adapter.apply_elite(model, concept, positive, 0.8)
    if config == "global+local+map":
        return adapter.apply_elite(model, concept, positive, 0.8, record_attention=True)
    return model


def one_step(model, context, size: int) -> float:
    """Seconds for one CFG step (uncond + cond rows) of ``model``, its patches applied around it."""
    latent = torch.randn(2, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(7))
    options = copy.copy(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=[1, 0], sigmas=torch.full((2,), 5.0))
    model.patch_model()
    try:
        start = time.perf_counter()
        with torch.no_grad():
            model.model.diffusion_model(latent, timesteps=torch.full((2,), 500.0), context=context,
                                        transformer_options=options)
        return time.perf_counter() - start
    finally:
        model.unpatch_model()


def _seconds_per_call(fn, reps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def attn2_seconds(model, context, size: int, reps: int = 5) -> tuple[float, float]:
    """Seconds per CFG step in the 16 cross-attentions at their real shapes: ComfyUI's attention
    alone, and ELITE's probe + replace (text attention plus the local branch on the cond rows).

    Many repetitions of these small calls time ELITE's extra work far more steadily than whole steps.
    """
    from comfy.ldm.modules.attention import optimized_attention

    from elite_test_pack.pack_import import elite_core_module

    options = model.model_options["transformer_options"]
    (probe,) = options["patches"]["attn2_patch"]
    gen = torch.Generator().manual_seed(3)
    plain = elite = 0.0
    for site in elite_core_module("elite.sites").SD1_ATTN2_SITES:
        side = size // 8 // site.base_channels_mult // (2 if site.block[0] == "middle" else 1)
        channels = 320 * site.base_channels_mult
        q = torch.randn(2, side * side, channels, generator=gen)
        k, v = torch.randn(2, 2, 77, channels, generator=gen)
        extra = {"n_heads": 8, "dim_head": channels // 8, "cond_or_uncond": [1, 0], "block": site.block,
                 "sigmas": torch.full((2,), 5.0)}
        replace = options["patches_replace"]["attn2"][(*site.block, 0)]

        def with_elite():
            probe(q, context, context, extra)  # leaves the placeholder selection in extra
            return replace(q, k, v, extra)

        plain += _seconds_per_call(lambda: optimized_attention(q, k, v, 8), reps)
        elite += _seconds_per_call(with_elite, reps)
    return plain, elite


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(config: str, size: int) -> None:
    setup_comfy()
    model, concept, positive, context = build_inputs()
    model = configure(model, concept, positive, config)
    one_step(model, context, size)  # warm-up: lazy caches, allocator
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    one_step(model, context, size)
    print(json.dumps({"config": config, "peak_kb": _rss_kb("VmHWM")}))


def measure_peak(config: str, size: int) -> int:
    done = subprocess.run([sys.executable, __file__, "--memory-child", config, "--size", str(size)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.size)
        return

    setup_comfy()
    base, concept, positive, context = build_inputs()
    models = {config: configure(base, concept, positive, config) for config in CONFIGS}  # clones of one UNet
    # one warm-up round (and the lazy local K/V projections), then rounds in turn, who goes first rotating
    times = alternate({config: (lambda _round, model=models[config]: one_step(model, context, args.size))
                       for config in CONFIGS}, args.rounds)
    median = {config: statistics.median(values) for config, values in times.items()}
    print(f"one CFG step (batch 2), SD1.5 layout, {args.size}x{args.size}, CPU, {args.rounds} alternating rounds, "
          f"time ratios per round")
    for config in CONFIGS[1:]:
        print(f"  {config:<17} / unpatched: {spread(ratios(times, config, 'unpatched')).describe()}")
    print(f"  attention map on / off: {spread(ratios(times, 'global+local+map', 'global+local')).describe()}")
    plain, elite = attn2_seconds(models["global+local"], context, args.size)
    print(f"  16 attn2 attentions per step: ELITE's probe + replace take {elite / plain:.2f}x ComfyUI's "
          f"attention alone; the extra is {(elite - plain) / median['unpatched']:.2%} of an unpatched step "
          f"(so global+local ~ {1 + (elite - plain) / median['unpatched']:.3f}x)")
    if not args.skip_memory:
        peaks = {config: measure_peak(config, args.size) for config in CONFIGS}
        for config in CONFIGS:
            print(f"  {config:<17} peak RSS ratio {peaks[config] / peaks['unpatched']:.3f}x")


if __name__ == "__main__":
    main()
