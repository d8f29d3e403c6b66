"""Cost of one ELITE training step (global stage, local stage) against one textual-inversion step.

All three run on the same real-size SD1.5 layout with RANDOM weights (diffusers UNet, CLIP-L text
encoder, CLIP ViT-L/14 vision model, SD VAE), the same batch (latents, noise, timesteps, prompt
"a photo of S") and AdamW. Textual inversion learns one token embedding at S, its gradient going
through the frozen UNet and all text layers; the global stage trains the mapper and the 16 K/V copies
(elite_core.elite.objectives.GlobalStage); the local stage the local mapper and its K/V with both
cross-attention branches (LocalStage). The configurations take turns for ``--rounds`` rounds after
one untimed warm-up each; the script prints the median ratio to the textual-inversion step measured
in this one run, and the peak memory: CUDA's peak allocation per configuration on a GPU, the
process's peak resident size after each configuration's steps on a CPU.

    .cache/venv/bin/python bench/bench_elite_train.py [--resolution 512] [--rounds 2] [--batch 1]

This is a benchmark, not a test: it asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def real_size_models(device):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # the SD1.x UNet layout
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, image_size=224, patch_size=14,
                                              hidden_act="quick_gelu"))
    for module in (unet, vae, text, vision):
        module.requires_grad_(False).eval().to(device)
    return unet, vae, text, vision


def peak_memory(device) -> str:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return f"{peak:.2f} GiB peak allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process peak RSS so far"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    from elite_core.common.noise_schedule import add_noise, scaled_linear_schedule
    from elite_core.elite.mappers import OFFICIAL_WIDTHS
    from elite_core.elite.objectives import GlobalStage, LocalStage, injected_words, new_global_mapper, new_local_mapper

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet, vae, text, vision = real_size_models(device)
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

    runs = {
        "textual inversion": (inversion_loss, torch.optim.AdamW([embedding], lr=5e-3)),
        "ELITE global stage": (global_loss, torch.optim.AdamW(global_stage.parameters(), lr=6.4e-5)),
        "ELITE local stage": (local_loss, torch.optim.AdamW(local_stage.parameters(), lr=3.2e-4)),
    }
    times = {name: [] for name in runs}
    memory = {}
    for round_index in range(args.rounds + 1):
        for name, (loss_fn, optimizer) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
            memory[name] = peak_memory(device)
    base = times["textual inversion"]
    print(f"ELITE training steps vs a textual-inversion step (real-size SD1.5 layout, random weights, batch {b}, "
          f"{args.resolution} px, {args.rounds} rounds, {device}, {torch.get_num_threads()} threads)")
    for name in runs:
        ratio = statistics.median(t / u for t, u in zip(times[name], base))
        print(f"  {name:20s} {ratio:.3f}x   {memory[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
