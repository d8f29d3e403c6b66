"""Train ELITE's global mapper (the first stage of Wei et al., ICCV 2023) on your own images, with
``accelerate`` on a CPU, one GPU, several GPUs or several machines (data parallel).

    accelerate launch -m elite_training.elite --pretrained sd15-diffusers/ --image-encoder clip-vit-large-patch14/ \\
        --data my_objects/ --output-dir runs/global

``--pretrained`` is an SD1.x diffusers folder (unet/, vae/, text_encoder/, tokenizer/) and
``--image-encoder`` a CLIP ViT-L/14 vision folder (transformers layout); both load offline. The data
layout is :mod:`elite_training.elite_data`'s. Defaults are the reference's (§9.3): batch 4 per
process, gradient accumulation 4, AdamW (0.9, 0.999, wd 1e-2) at 1e-6 x total batch, constant,
clipping at 1.0, 512 px, a mapper file every 200 steps.

The maths is ``elite_core.elite_objectives.GlobalStage``, the same cross-attention and injection the
nodes run. Every sample's draws (which image, augmentations, caption, noise, timestep) come from the
seed and its place in the global batch, so N processes x batch b train as 1 process x N*b, and a
run resumed from a checkpoint continues exactly as if it had not stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

from elite_core.checkpoint import save_mapper_safetensors
from elite_core.elite_objectives import GlobalStage, attn2_modules, new_global_mapper, posterior_sample
from elite_core.mappers import MapperWidths
from elite_core.noise_schedule import NUM_TRAIN_TIMESTEPS
from elite_core.sites import SD1_ATTN2_SITES

from .elite_data import DataError, FolderDataset, reference_placeholder_index, sample_generator

log = logging.getLogger("elite.train")

BASE_LEARNING_RATE = 1e-6  # x per-process batch x accumulation x processes (the reference's --scale_lr)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="accelerate launch -m elite_training.elite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pretrained", required=True, help="SD1.x diffusers folder (unet/, vae/, text_encoder/, tokenizer/)")
    p.add_argument("--image-encoder", required=True, help="CLIP ViT-L/14 vision model folder (transformers)")
    p.add_argument("--data", required=True, help="folder with images/ and optional masks/")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--steps", type=int, default=200_000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=4, help="per process and micro-step")
    p.add_argument("--gradient-accumulation", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"default: {BASE_LEARNING_RATE} x batch x accumulation x processes")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints and mapper files")
    p.add_argument("--resume", default=None, help="a checkpoint-<step> folder of --output-dir, or 'latest'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (tests)")
    return p.parse_args(argv)


def load_models(pretrained: str, image_encoder: str, device, dtype):
    """The frozen SD1.x models and the tokenizer, from local folders only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", local_files_only=True)
        text = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", local_files_only=True)
        vision = CLIPVisionModel.from_pretrained(image_encoder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot load the base models: {exc}. --pretrained must be an SD1.x diffusers folder "
                        "(unet/, vae/, text_encoder/, tokenizer/) and --image-encoder a CLIP vision folder.") from None
    for module in (unet, vae, text, vision):
        module.requires_grad_(False).eval().to(device, dtype)
    return unet, vae, text, tokenizer, vision


def mapper_widths(unet, vision) -> MapperWidths:
    kv = tuple(attn2_modules(unet)[site.ckpt_prefix].to_k.weight.shape[0] for site in SD1_ATTN2_SITES)
    return MapperWidths(input_dim=vision.config.hidden_size, hidden_dim=vision.config.hidden_size,
                        output_dim=unet.config.cross_attention_dim, kv_dims=kv)


def epoch_order(seed: int, epoch: int, size: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()


def micro_batch(dataset, tokenizer, vae, step: int, micro: int, config, rank: int, world: int, device, dtype):
    """The samples of this process in micro-step ``micro`` of optimizer step ``step``, with their draws."""
    per_step = config.batch_size * config.gradient_accumulation * world
    first = (micro * world + rank) * config.batch_size
    rows = []
    for position in range(first, first + config.batch_size):
        counter = step * per_step + position
        index = epoch_order(config.seed, counter // len(dataset), len(dataset))[counter % len(dataset)]
        gen = sample_generator(config.seed, step, position)
        sample = dataset.sample(index, gen)
        down = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for the SD VAE
        latent_shape = (vae.config.latent_channels, config.resolution // down, config.resolution // down)
        rows.append((sample, torch.randn(latent_shape, generator=gen), torch.randn(latent_shape, generator=gen),
                     int(torch.randint(NUM_TRAIN_TIMESTEPS, (1,), generator=gen))))
    captions = [row[0].caption for row in rows]
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    pixels = torch.stack([row[0].pixels for row in rows]).to(device, dtype)
    with torch.no_grad():
        latents = posterior_sample(vae, pixels, torch.stack([row[1] for row in rows]).to(device, dtype)).float()
    return dict(latents=latents, noise=torch.stack([row[2] for row in rows]).to(device),
                timesteps=torch.tensor([row[3] for row in rows], device=device),
                pixels_clip=torch.stack([row[0].pixels_clip for row in rows]).to(device, dtype),
                input_ids=ids.to(device),
                placeholder_index=torch.tensor([reference_placeholder_index(c) for c in captions], device=device))


def save_mapper(accelerator, stage, path: str, step: int, config) -> None:
    state = {k: v.float() for k, v in accelerator.unwrap_model(stage).mapper.state_dict().items()}
    metadata = {"stage": "global", "step": str(step), "base_model": os.path.basename(os.path.normpath(config.pretrained)),
                "trainer": "elite-personalize elite_training.elite"}
    partial = path + ".partial"
    save_mapper_safetensors(state, partial, kind="global", metadata=metadata)
    os.replace(partial, path)


def find_resume(config) -> str | None:
    if not config.resume:
        return None
    if config.resume != "latest":
        return config.resume
    found = [d for d in os.listdir(config.output_dir) if d.startswith("checkpoint-")] if os.path.isdir(config.output_dir) else []
    return os.path.join(config.output_dir, max(found, key=lambda d: int(d.split("-")[1]))) if found else None


def train(accelerator, models, dataset, config) -> str:
    """Run the global stage; returns the final mapper file (on every process)."""
    unet, vae, text, tokenizer, vision = models
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    mapper = new_global_mapper(unet, mapper_widths(unet, vision), seed=config.seed).to(device)
    stage = GlobalStage(mapper, unet, text, vision)
    lr = config.learning_rate or BASE_LEARNING_RATE * config.batch_size * config.gradient_accumulation * world
    optimizer = torch.optim.AdamW(stage.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    stage, optimizer = accelerator.prepare(stage, optimizer)
    os.makedirs(config.output_dir, exist_ok=True)
    start = 0
    resume = find_resume(config)
    if resume:
        accelerator.load_state(resume)
        with open(os.path.join(resume, "elite_step.json")) as f:
            start = json.load(f)["step"]
        log.info("resumed from %s at step %d", resume, start)
    dtype = next(unet.parameters()).dtype

    def checkpoint(step: int) -> None:
        folder = os.path.join(config.output_dir, f"checkpoint-{step}")
        accelerator.save_state(folder)
        if accelerator.is_main_process:
            with open(os.path.join(folder, "elite_step.json"), "w") as f:
                json.dump({"step": step}, f)
            save_mapper(accelerator, stage, os.path.join(config.output_dir, f"mapper_{step:06d}.safetensors"), step, config)
        accelerator.wait_for_everyone()

    step, started = start, time.perf_counter()
    try:
        for step in range(start, config.steps):
            total = 0.0
            for micro in range(config.gradient_accumulation):
                batch = micro_batch(dataset, tokenizer, vae, step, micro, config, rank, world, device, dtype)
                with accelerator.autocast():
                    loss, _ = stage(**batch)
                accelerator.backward(loss / config.gradient_accumulation)
                total += loss.item() / config.gradient_accumulation
            total = accelerator.reduce(torch.tensor(total, device=device), reduction="mean").item()
            if accelerator.is_main_process:
                with open(os.path.join(config.output_dir, "train_log.jsonl"), "a") as f:
                    f.write(json.dumps({"step": step + 1, "loss": total}) + "\n")
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(stage.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.is_main_process and ((step + 1) % 10 == 0 or step + 1 == config.steps):
                rate = (step + 1 - start) * config.batch_size * config.gradient_accumulation * world / (time.perf_counter() - started)
                log.info("step %d/%d  loss %.5f  %.2f samples/s", step + 1, config.steps, total, rate)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                checkpoint(step + 1)
    except KeyboardInterrupt:
        log.warning("interrupted during step %d: saving the state after step %d", step + 1, step)
        if step > start:
            checkpoint(step)
        raise
    final = os.path.join(config.output_dir, "global_mapper.safetensors")
    if accelerator.is_main_process:
        save_mapper(accelerator, stage, final, config.steps, config)
    accelerator.wait_for_everyone()
    return final


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_args(argv)
    try:
        from accelerate import Accelerator
    except ImportError:
        log.error("The trainer needs Hugging Face accelerate: pip install -r requirements-train.txt")
        return 2
    try:
        dataset = FolderDataset(config.data, config.resolution)
        accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        models = load_models(config.pretrained, config.image_encoder, accelerator.device, dtype)
        path = train(accelerator, models, dataset, config)
    except DataError as exc:
        log.error("%s", exc)
        return 2
    log.info("done: %s (load it with ELITE Global Mapper Loader from ComfyUI/models/elite/)", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
