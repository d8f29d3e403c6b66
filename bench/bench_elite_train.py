"""Cost of one ELITE training step (global stage, local stage) against one textual-inversion step.

All three run on the same real-size SD1.5 layout with RANDOM weights (diffusers UNet, CLIP-L text
encoder, CLIP ViT-L/14 vision model; no VAE: the batch's latents are drawn directly, so the memory
figures leave out the VAE's 0.3 GiB), the same batch (latents, noise, timesteps, prompt
"a photo of S") and AdamW. Textual inversion learns one token embedding at S, its gradient going
through the frozen UNet and all text layers; the global stage trains the mapper and the 16 K/V copies
(elite_core.elite.objectives.GlobalStage); the local stage the local mapper and its K/V with both
cross-attention branches (LocalStage). The three take turns step by step in one process
(``bench/rounds.py``: one untimed warm-up round, then ``--rounds`` rounds, who goes first rotating);
the script prints each stage's ratio to the textual-inversion step of the same round, summarised by
its median, quartiles and range, against the targets (global <= 1.15x, local <= 1.20x), and the peak
memory: CUDA's peak allocation per configuration on a GPU; on a CPU the process's peak resident size
after each configuration's warm-up step (they run in the order listed, so each figure includes the
ones before it).

    .cache/venv/bin/python bench/bench_elite_train.py [--resolution 512] [--rounds 5] [--batch 1]

The default resolution is the reference's training size, where the targets are stated: 5 rounds take
about 6 minutes on 2 idle CPU cores and 8.5 GiB of memory. ``--resolution 256`` is quicker, but there
the fixed work (two CLIP ViT-L/14 forwards at 224 px, the mappers) weighs 4x more against the UNet's.

This is a benchmark, not a test: it asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch
from rounds import alternate, ratios, spread, timed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WARMUP = 1
TARGETS = {"ELITE global stage": 1.15, "ELITE local stage": 1.20}  # / a textual-inversion step, docs/development.md#benches


def real_size_models(device):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # the SD1.x UNet layout
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, image_size=224, patch_size=14,
                                              hidden_act="quick_gelu"))
    for module in (unet, text, vision):
        module.requires_grad_(False).eval().to(device)
    return unet, text, vision


def peak_memory(device) -> tuple[float, str]:
    """(GiB, words): CUDA's peak allocation since the last call, or the CPU process's peak resident size so far."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return peak, f"{peak:.2f} GiB peak allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return peak, f"{peak:.2f} GiB process peak RSS after its warm-up step"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    from elite_core.common.noise_schedule import add_noise, scaled_linear_schedule
    from elite_core.elite.mappers import OFFICIAL_WIDTHS
    from elite_core.elite.objectives import GlobalStage, LocalStage, injected_words, new_global_mapper, new_local_mapper

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet, text, vision = real_size_models(device)
    gen = torch.Generator().manual_seed(1)
    b, latent = args.batch, args.resolution // 8
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 338] + [49407] * 71] * b)  # BOS, 5 words (S last), EOS padding
    batch = dict(latents=torch.randn(b, 4, latent, latent, generator=gen), noise=torch.randn(b, 4, latent, latent, generator=gen),
                 timesteps=torch.randint(0, 1000, (b,), generator=gen), pixels_clip=torch.randn(b, 3, 224, 224, generator=gen),
                 input_ids=ids, placeholder_index=torch.full((b,), 5))
    segmentation = torch.zeros(b, 3, 224, 224)
    segmentation[:, :, 40:190, 30:200] = 1.0
    local_batch = dict(batch, pixels_object=batch["pixels_clip"] * segmentation, object_segmentation=segmentation,
                       mask=torch.ones(b, 1, latent, latent))
    batch = {k: v.to(device) for k, v in batch.items()}
    local_batch = {k: v.to(device) for k, v in local_batch.items()}
    schedule = scaled_linear_schedule()

    embedding = torch.nn.Parameter(torch.randn(768, device=device) * 0.01)
    plain_processors = dict(unet.attn_processors)

    def inversion_loss():
        unet.set_attn_processor(dict(plain_processors))  # diffusers empties the dict it is given
        with injected_words(text, batch["placeholder_index"], embedding.expand(b, 1, -1)):
            context = text(input_ids=batch["input_ids"])[0]
        eps = unet(add_noise(batch["latents"], batch["noise"], batch["timesteps"], schedule), batch["timesteps"],
                   encoder_hidden_states=context).sample
        return torch.nn.functional.mse_loss(eps.float(), batch["noise"].float())

    global_stage = GlobalStage(new_global_mapper(unet, OFFICIAL_WIDTHS, seed=1).to(device), unet, text, vision)
    global_processors = dict(unet.attn_processors)
    local_stage = LocalStage(new_local_mapper(unet, OFFICIAL_WIDTHS, seed=2).to(device),
                             new_global_mapper(unet, OFFICIAL_WIDTHS, seed=3).to(device), unet, text, vision)
    local_processors = dict(unet.attn_processors)

    def global_loss():
        unet.set_attn_processor(dict(global_processors))
        return global_stage(**batch)[0]

    def local_loss():
        unet.set_attn_processor(dict(local_processors))
        return local_stage(**local_batch)[0]

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    memory = {}

    def step(name, loss_fn, optimizer):
        def run(round_index):
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def run_and_measure(round_index):
            seconds = timed(run, sync)(round_index)
            if device.type == "cuda" or round_index < WARMUP:  # a CPU's peak RSS only grows: read it once
                memory[name] = max(memory.get(name, (0.0, "")), peak_memory(device))
            return seconds

        return run_and_measure

    times = alternate({
        "textual inversion": step("textual inversion", inversion_loss, torch.optim.AdamW([embedding], lr=5e-3)),
        "ELITE global stage": step("ELITE global stage", global_loss,
                                   torch.optim.AdamW(global_stage.parameters(), lr=6.4e-5)),
        "ELITE local stage": step("ELITE local stage", local_loss, torch.optim.AdamW(local_stage.parameters(), lr=3.2e-4)),
    }, args.rounds, WARMUP)
    print(f"ELITE training steps vs a textual-inversion step (real-size SD1.5 layout, random weights, batch {b}, "
          f"{args.resolution} px, {device}, {torch.get_num_threads()} threads; {WARMUP} warm-up + {args.rounds} "
          f"alternating rounds, ratios per round)")
    for name, target in TARGETS.items():
        print(f"  {name}: {spread(ratios(times, name, 'textual inversion')).describe(target=target)}")
    for name in times:
        print(f"  {name} memory: {memory[name][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
