"""ELITE's extra cross-attention work, site by site, against one unpatched CFG step (real-size SD1.5, random weights).

One real patched step (ELITE global + local, λ 0.8; CFG batch: uncond + cond rows) records what
each of the 16 attn2 sites receives: q, k, v and extra_options. Then, in every round, each site's
variants run on those inputs one call after the other (who goes first turns with the round):

  unpatched  ComfyUI's optimized attention on the same q/k/v
  elite      ELITE Attention Patch: the placeholder probe + the attn2 replace (text attention, then
             the local branch on the cond row)
  ipadapter  an IPAdapter-like reference: the same attention plus one attention over 16 image
             tokens projected per call (both rows), added with a weight
  lambda0    ELITE's probe + replace at a step outside its start/end window: λ is 0 there

A round's extra is its variant's time over the 16 sites minus unpatched's in the same round; the
step ratio is 1 + extra / (an unpatched step, timed in the same run between the rounds), printed
with its quartiles over the rounds. On a busy machine, where a call can wait for a core, the best
of the rounds per site and call (over the best step) is printed too. Beside it, the floor: the local branch's own arithmetic (the
local attention 4·n·L·C per cond row and site, its softmax, the gate's multiply-add), as a share of
the step's FLOPs (counted by torch's FlopCounterMode on the unpatched step, CPU attention added).
Strength 0 installs no replace at all (checked here): its attn2 is ComfyUI's own.

    .cache/venv/bin/python bench/bench_attn2.py [--size 512] [--rounds 20] [--threads 2] [--sites 0,6,15] [--per-site]

Runs on CUDA when torch sees a GPU, else on the CPU; it prints which. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from sd15_setup import build_inputs, configure, describe, one_step, setup_comfy, synchronize

VARIANTS = ("unpatched", "elite", "ipadapter", "lambda0")
IMAGE_TOKENS = 16  # IPAdapter plus
IMAGE_WEIGHT = 0.8


class Recorder:
    """An attn2 replace that keeps a copy of what its site receives, then calls the real one."""

    def __init__(self, inner, block, records: dict):
        self.inner, self.block, self.records = inner, block, records

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    def __call__(self, q, k, v, extra_options):
        self.records[self.block] = (q.clone(), k.clone(), v.clone(), dict(extra_options))
        return self.inner(q, k, v, extra_options)


def replaces(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def probe_of(model):
    (probe,) = model.model_options["transformer_options"]["patches"]["attn2_patch"]
    return probe


def record_sites(patched, context, size: int) -> dict:
    """{block: (q, k, v, extra_options)} of one real patched step."""
    records: dict = {}
    recording = patched.clone()
    for key, replace in replaces(patched).items():
        recording.set_model_attn2_replace(Recorder(replace, key[:2], records), *key)
    one_step(recording, context, size)
    return records


def step_flops(model, context, size: int) -> float:
    """FLOPs of one unpatched CFG step: torch's counter, plus CPU attention, which it does not count."""
    from torch.utils import flop_counter

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = lambda q, k, v, *args, **kwargs: flop_counter.sdpa_flop_count(q, k, v)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=custom) as counter:
        one_step(model, context, size)
    return float(counter.get_total_flops())


def floor_flops(records: dict, tokens: int) -> tuple[float, float]:
    """The local branch's arithmetic over the recorded sites (cond rows): the local attention (two
    products of n·L·C multiply-adds, the softmax over h·n·L), the gate's multiply-add into the
    output; and separately the gate's own text logits (n·T·C multiply-adds, their softmax column)."""
    local = gate = 0.0
    for q, k, _, extra in records.values():
        rows = q.shape[0] // len(extra["cond_or_uncond"]) * list(extra["cond_or_uncond"]).count(0)
        n, channels, heads, text = q.shape[1], q.shape[2], extra["n_heads"], k.shape[1]
        local += rows * (4 * n * tokens * channels + 5 * heads * n * tokens + 2 * n * channels)
        gate += rows * (2 * n * text * channels + 5 * heads * n * text)
    return local, gate


def site_variants(patched, windowed, records: dict, context, attention) -> list[dict]:
    """Per recorded site, {variant: a call} on that site's inputs."""
    probe, windowed_probe = probe_of(patched), probe_of(windowed)
    gen = torch.Generator().manual_seed(11)
    sites = []
    for block, (q, k, v, extra) in records.items():
        key = (*block, 0)
        replace, windowed_replace = replaces(patched)[key], replaces(windowed)[key]
        early = dict(extra, sigmas=torch.full_like(extra["sigmas"], 1e4))  # before the window opens
        channels, heads = q.shape[-1], extra["n_heads"]
        image = torch.randn(q.shape[0], IMAGE_TOKENS, 768, generator=gen).to(q.device)
        to_k_ip, to_v_ip = (torch.randn(channels, 768, generator=gen).mul_(0.02).to(q.device) for _ in range(2))

        def unpatched(q=q, k=k, v=v, extra=extra):
            return attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                             transformer_options=extra)

        def elite(q=q, k=k, v=v, extra=dict(extra), replace=replace):
            probe(None, context, context, extra)
            return replace(q, k, v, extra)

        def ipadapter(q=q, k=k, v=v, extra=extra, image=image, wk=to_k_ip, wv=to_v_ip, heads=heads):
            out = attention(q, k, v, heads, attn_precision=extra.get("attn_precision"), transformer_options=extra)
            ip = attention(q, F.linear(image, wk), F.linear(image, wv), heads)
            return out + ip * IMAGE_WEIGHT

        def lambda0(q=q, k=k, v=v, extra=early, replace=windowed_replace):
            windowed_probe(None, context, context, extra)
            return replace(q, k, v, extra)

        sites.append({"unpatched": unpatched, "elite": elite, "ipadapter": ipadapter, "lambda0": lambda0})
    return sites


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, choices=(256, 512, 768))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=3, help="unpatched steps timed between the rounds")
    parser.add_argument("--sites", help="a subset of the 16 sites by index (0-15, comma-separated), to iterate quickly")
    parser.add_argument("--per-site", action="store_true", help="also print each site's median extra")
    args = parser.parse_args()

    device = setup_comfy(args.threads)
    from comfy.ldm.modules.attention import optimized_attention

    from elite_test_pack.pack_import import elite_core_module

    adapter = elite_core_module("comfyui.elite_patch")
    base, concept, positive, context = build_inputs(device)
    patched = configure(base, concept, positive, "global+local")
    windowed = adapter.apply_elite(base, concept, positive, 0.8, start_percent=0.5)
    strength_zero = adapter.apply_elite(base, concept, positive, 0.0)
    assert not replaces(strength_zero) and not strength_zero.model_options.get("transformer_options", {}).get("patches")

    flops = step_flops(base, context, args.size)  # also the unpatched warm-up
    records = record_sites(patched, context, args.size)  # also the patched warm-up (local K/V projected)
    one_step(windowed, context, args.size)  # its local K/V
    tokens = concept.local_tokens().shape[1]
    local_flops, gate_flops = floor_flops(records, tokens)
    sites = site_variants(patched, windowed, records, context, optimized_attention)
    if args.sites:
        sites = [sites[int(index)] for index in args.sites.split(",")]
    for site in sites:  # warm-up of every call
        for call in site.values():
            call()

    totals = {variant: [0.0] * args.rounds for variant in VARIANTS}
    per_site = [{variant: [] for variant in VARIANTS} for _ in sites]
    steps = []
    step_every = max(1, args.rounds // max(1, args.steps))
    with torch.no_grad():
        for round_index in range(args.rounds):
            turn = round_index % len(VARIANTS)
            order = VARIANTS[turn:] + VARIANTS[:turn]
            for site_index, site in enumerate(sites):
                for variant in order:
                    synchronize(device)
                    start = time.perf_counter()
                    site[variant]()
                    synchronize(device)
                    seconds = time.perf_counter() - start
                    totals[variant][round_index] += seconds
                    per_site[site_index][variant].append(seconds)
            if round_index % step_every == step_every - 1 and len(steps) < args.steps:
                steps.append(one_step(base, context, args.size))
    step = statistics.median(steps or [one_step(base, context, args.size)])

    share = "" if len(sites) == len(records) else f" (a subset: {len(sites)} of {len(records)} sites)"
    print(f"ELITE's extra attention: SD1.5 layout, {args.size}x{args.size}, CFG batch 2, fp32, {describe(device)}, "
          f"PyTorch SDPA attention, {args.rounds} rounds{share}")
    print(f"  unpatched step {step * 1e3:.0f} ms (median of {len(steps) or 1}), {flops / 1e12:.3f} TFLOP")
    print(f"  floor: the local branch's own arithmetic {local_flops / 1e9:.2f} GFLOP = {local_flops / flops:.2%} of a "
          f"step -> {1 + local_flops / flops:.4f}x; with the gate's text logits (+{gate_flops / flops:.2%}) "
          f"{1 + (local_flops + gate_flops) / flops:.4f}x")
    print(f"  {'variant':<10} {'extra ms per step (q1 / median / q3)':<38} step ratio (q1 / median / q3)")
    extras = {}
    for variant in VARIANTS[1:]:
        extras[variant] = [t - u for t, u in zip(totals[variant], totals["unpatched"])]
        low, mid, high = quartiles(extras[variant])
        print(f"  {variant:<10} {low * 1e3:>9.2f} / {mid * 1e3:>9.2f} / {high * 1e3:>9.2f}"
              f"{'':<8} {1 + low / step:.4f} / {1 + mid / step:.4f} / {1 + high / step:.4f}")
    over = [(e - i) / step for e, i in zip(extras["elite"], extras["ipadapter"])]
    low, mid, high = quartiles(over)
    print(f"  elite - ipadapter: {mid:+.2%} of a step (quartiles {low:+.2%} / {high:+.2%})")
    best_step = min(steps) if steps else step
    best = {v: sum(min(timings[v]) for timings in per_site) for v in VARIANTS}
    cells = ", ".join(f"{v} {1 + (best[v] - best['unpatched']) / best_step:.4f}x" for v in VARIANTS[1:])
    print(f"  best of the rounds, per site and call (robust to a busy machine): {cells}")
    print(f"  unpatched attn2 itself: {statistics.median(totals['unpatched']) / step:.2%} of a step; "
          "strength 0 installs no replace (attn2 = ComfyUI's own): 1.0000x by construction")
    if args.per_site:
        names = list(records) if not args.sites else [list(records)[int(i)] for i in args.sites.split(",")]
        for block, timings, (q, *_) in zip(names, per_site, [records[name] for name in names]):
            plain = statistics.median(timings["unpatched"])
            cells = "  ".join(f"{v} {(statistics.median(timings[v]) - plain) * 1e3:+7.2f}" for v in VARIANTS[1:])
            print(f"  {str(block):<15} n={q.shape[1]:<5} C={q.shape[2]:<5} unpatched {plain * 1e3:7.2f} ms  {cells}")


if __name__ == "__main__":
    main()
