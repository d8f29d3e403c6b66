"""Train ELITE's mappers (Wei et al., ICCV 2023) on your own images, both stages, with ``accelerate``
on a CPU, one GPU, several GPUs or several machines (data parallel).

    accelerate launch -m elite_training.elite --pretrained sd15-diffusers/ --image-encoder clip-vit-large-patch14/ \\
        --data my_objects/ --output-dir runs/global
    accelerate launch -m elite_training.elite --stage local --global-mapper runs/global/global_mapper.safetensors \\
        --pretrained sd15-diffusers/ --image-encoder clip-vit-large-patch14/ --data my_objects/ --output-dir runs/local

``--pretrained`` is an SD1.x diffusers folder (unet/, vae/, text_encoder/, tokenizer/) or a single-file
``.safetensors`` checkpoint, and ``--image-encoder`` a CLIP ViT-L/14 vision folder (transformers
layout); all load offline. ``--data`` is a plain folder, Open Images V6 or WebDataset shards
(:mod:`elite_training.prepare_data`). Defaults are the reference's (docs/reference/elite.md §9.3): batch 4 (global) /
2 (local) per process, gradient accumulation 4, AdamW (0.9, 0.999, wd 1e-2) at 1e-6 / 1e-5 x total
batch, constant, clipping at 1.0, 512 px, a mapper file every 200 steps. Gradient accumulation is
accelerate's (one all-reduce per optimizer step).

The maths is ``elite_core.elite.objectives`` (``GlobalStage``, ``LocalStage``): the same
cross-attention and injection the nodes run. Every sample's draws (which image, augmentations,
caption, noise, timestep) come from the seed and its place in the global batch, so N processes x
batch b train as 1 process x N*b, and a run resumed from a checkpoint continues exactly as if it had not stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch
from tqdm.auto import tqdm

from elite_core.common.checks import real_number, seed_number, whole_number
from elite_core.common.files import disk_full
from elite_core.elite.mappers import MapperWidths
from elite_core.elite.objectives import (
    LOSS_NORMALISATIONS,
    GlobalStage,
    LocalStage,
    attn2_modules,
    new_global_mapper,
    new_local_mapper,
)
from elite_core.elite.sites import SD1_ATTN2_SITES
from elite_core.elite.taming import IdentityLoss

from .base_models import load_models
from .data import LAYOUTS, open_dataset
from .data.batches import micro_batch, vae_downscale
from .data.captions import CaptionDataset
from .data.objects import DataError
from .elite_checkpoints import agree_on_start, find_resume, load_checkpoint, load_global_mapper, save_checkpoint, save_mapper
from .elite_validation import save_validation, tensorboard_logging, tensorboard_tracker, validation_images, validation_samples
from .stopping import StopRequest, TrainingStopped

log = logging.getLogger("elite.train")

# x per-process batch x accumulation x processes (the reference's --scale_lr)
BASE_LEARNING_RATE = {"global": 1e-6, "local": 1e-5}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="accelerate launch -m elite_training.elite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=("global", "local"), default="global",
                   help="global: the mapper and its K/V; local: the local mapper, with a trained --global-mapper")
    p.add_argument("--global-mapper", default=None, help="the trained global mapper file (local stage)")
    p.add_argument("--loss-normalisation", choices=LOSS_NORMALISATIONS, default="reference",
                   help="local stage: the reference's (4x a per-element mean) or a per-element mean")
    taming = p.add_argument_group("Taming-Encoder options (off by default)")
    taming.add_argument("--identity-weight", type=real_number(0.0), default=0.0,
                        help="weight of the identity-preservation loss: 1 - cos of CLIP image embeddings of the "
                             "decoded denoised estimate and the reference (costs a VAE decode with gradient)")
    taming.add_argument("--identity-max-timestep", type=whole_number(0, 999), default=400,
                        help="the identity loss leaves out samples noisier than this timestep")
    taming.add_argument("--plain-data", default=None,
                        help="global stage: a folder of captioned photos (images/, captions/) without the concept, "
                             "mixed into every micro-batch (regularised joint training)")
    taming.add_argument("--plain-weight", type=real_number(0.0), default=1.0, help="weight of the plain caption batches' loss")
    p.add_argument("--pretrained", required=True,
                   help="an SD1.x diffusers folder (unet/, vae/, text_encoder/, tokenizer/) or a single-file "
                        ".safetensors checkpoint as ComfyUI's models/checkpoints/ holds them")
    p.add_argument("--config", default=None,
                   help="single file: a diffusers folder whose configs to use (default: SD1.5's, shipped)")
    p.add_argument("--tokenizer", default=None,
                   help="single file: the CLIP tokenizer folder (default: ComfyUI's comfy/sd1_tokenizer)")
    p.add_argument("--image-encoder", required=True, help="CLIP ViT-L/14 vision model folder (transformers)")
    p.add_argument("--data", required=True,
                   help="a folder (images/, masks/, captions/), an Open Images V6 root or a shard set (shards.json)")
    p.add_argument("--data-layout", choices=LAYOUTS, default="auto")
    p.add_argument("--split", default="test", help="Open Images split (the reference trains on test)")
    p.add_argument("--clamp-object-resize", action="store_true",
                   help="local stage: clamp the masked object's cubic resize to 0-255 instead of the reference's "
                        "uint8 wrap-around (which turns the overshoot at its edges into bright or dark specks)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--steps", type=whole_number(1), default=200_000, help="optimizer steps")
    p.add_argument("--batch-size", type=whole_number(1), default=None,
                   help="per process and micro-step (reference: 4 global, 2 local)")
    p.add_argument("--gradient-accumulation", type=whole_number(1), default=4)
    p.add_argument("--learning-rate", type=real_number(0.0, above_low=True), default=None,
                   help="default: 1e-6 (global) or 1e-5 (local) x batch x accumulation x processes")
    p.add_argument("--max-grad-norm", type=real_number(0.0), default=1.0,
                   help="clip the gradient norm to this value (the authors: 1.0); 0 turns clipping off")
    p.add_argument("--resolution", type=whole_number(64, multiple_of=64), default=512)
    p.add_argument("--checkpoint-every", type=whole_number(0), default=200,
                   help="steps between checkpoints and mapper files (0: only when the run stops or ends)")
    p.add_argument("--validation-images", type=whole_number(0), default=4,
                   help="objects sampled at every checkpoint (LMS, CFG 5, 'a photo of a S'); 0 = none")
    p.add_argument("--validation-steps", type=whole_number(1), default=100, help="LMS steps of the validation images")
    p.add_argument("--export-pt", action="store_true",
                   help="also write each mapper in the official .pt layout (mapper_<step>.pt / local_mapper.pt ...)")
    p.add_argument("--resume", default=None, help="a checkpoint-<step> folder of --output-dir, or 'latest'")
    p.add_argument("--seed", type=seed_number, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the UNet's activations in the backward pass: less memory, about 30%% more time")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (tests)")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 4 if args.stage == "global" else 2
    if args.stage == "local" and not args.global_mapper:
        p.error("the local stage needs --global-mapper (the trained global mapper file)")
    if args.stage == "local" and args.plain_data:
        p.error("--plain-data is for the global stage: the local stage trains nothing that plain captions use")
    return args


def mapper_widths(unet, vision) -> MapperWidths:
    kv = tuple(attn2_modules(unet)[site.ckpt_prefix].to_k.weight.shape[0] for site in SD1_ATTN2_SITES)
    return MapperWidths(input_dim=vision.config.hidden_size, hidden_dim=vision.config.hidden_size,
                        output_dim=unet.config.cross_attention_dim, kv_dims=kv)


def train(accelerator, models, dataset, config) -> str:
    """Run the chosen stage; returns the final mapper file (on every process)."""
    unet, vae, text, tokenizer, vision = models
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    widths = mapper_widths(unet, vision)
    identity = IdentityLoss(vae, vision, config.identity_weight, config.identity_max_timestep) \
        if config.identity_weight else None
    plain_data = CaptionDataset(config.plain_data, config.resolution) if config.plain_data else None
    if config.stage == "global":
        stage = GlobalStage(new_global_mapper(unet, widths, seed=config.seed).to(device), unet, text, vision,
                            identity=identity, plain_weight=config.plain_weight)
    else:
        global_mapper = load_global_mapper(config.global_mapper, widths).to(device)
        stage = LocalStage(new_local_mapper(unet, widths, seed=config.seed).to(device), global_mapper, unet, text,
                           vision, normalisation=config.loss_normalisation, identity=identity)
    base = BASE_LEARNING_RATE[config.stage]
    lr = config.learning_rate or base * config.batch_size * config.gradient_accumulation * world
    optimizer = torch.optim.AdamW(stage.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    stage, optimizer = accelerator.prepare(stage, optimizer)
    os.makedirs(config.output_dir, exist_ok=True)
    resume, start = find_resume(config)
    agree_on_start(accelerator, start)
    if resume:
        load_checkpoint(accelerator, resume, config.stage)
        log.info("resumed from %s at step %d", resume, start)
    dtype = next(unet.parameters()).dtype

    def checkpoint(step: int) -> None:
        save_checkpoint(accelerator, os.path.join(config.output_dir, f"checkpoint-{step}"), step, config.stage)
        if accelerator.is_main_process:
            save_mapper(accelerator, stage, os.path.join(config.output_dir, f"mapper_{step:06d}.safetensors"), step, config)
        accelerator.wait_for_everyone()

    accelerator.init_trackers(f"elite-{config.stage}", config={k: v for k, v in vars(config).items()
                                                               if isinstance(v, (int, float, str, bool))})
    samples = validation_samples(dataset, config.validation_images, config.seed) if config.validation_images else []

    def validate(step: int) -> None:
        if samples and accelerator.is_main_process:
            images = validation_images(accelerator.unwrap_model(stage), models, samples, steps=config.validation_steps)
            path = save_validation(images, config.output_dir, step, tensorboard_tracker(accelerator))
            log.info("validation images of step %d: %s", step, path)
        accelerator.wait_for_everyone()

    stop = StopRequest()
    progress = tqdm(total=config.steps, initial=start, disable=not accelerator.is_main_process, unit="step",
                    dynamic_ncols=True, desc=f"ELITE {config.stage}")
    started, samples_per_step = time.perf_counter(), config.batch_size * config.gradient_accumulation * world
    with stop.installed():
        for step in range(start, config.steps):
            total = 0.0
            for micro in range(config.gradient_accumulation):
                batch = micro_batch(dataset, tokenizer, vae, step, micro, config, rank, world, device, dtype, plain_data)
                # accelerate's accumulation: gradients are all-reduced once, on the last micro-batch, and
                # backward divides the loss by the accumulation (DeepSpeed's engine does both itself)
                with accelerator.accumulate(stage):
                    with accelerator.autocast():
                        loss, _ = stage(**batch)
                    accelerator.backward(loss)
                total += loss.item() / config.gradient_accumulation
            # one collective per step: the mean loss, and whether any process was asked to stop
            shared = accelerator.reduce(torch.tensor([total / world, float(stop.requested)], device=device), "sum")
            total, stopping = shared[0].item(), shared[1].item() > 0
            done = step + 1
            record = {"step": done, "loss": total}
            if config.max_grad_norm:
                norm = accelerator.clip_grad_norm_(stage.parameters(), config.max_grad_norm)
                if norm is not None:  # the gradient's norm before clipping (DeepSpeed clips inside its engine)
                    record["grad_norm"] = float(norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.is_main_process:
                with open(os.path.join(config.output_dir, "train_log.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
                rate = (done - start) * samples_per_step / (time.perf_counter() - started)
                progress.update(1)
                progress.set_postfix(loss=f"{total:.4f}", samples_per_s=f"{rate:.2f}")
                if done % 50 == 0 or done == config.steps:
                    log.info("step %d/%d  loss %.5f  %.2f samples/s", done, config.steps, total, rate)
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=done)
            if stopping and done < config.steps:
                checkpoint(done)
                progress.close()
                if accelerator.is_main_process:
                    log.warning("stopped on request after step %d; %s holds it: continue with --resume latest", done,
                                os.path.join(config.output_dir, f"checkpoint-{done}"))
                raise TrainingStopped(done)
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                checkpoint(done)
                validate(done)
    progress.close()
    if dataset.bad:
        log.warning("%d unreadable record(s) were skipped on process %d", dataset.bad, rank)
    final = os.path.join(config.output_dir, f"{config.stage}_mapper.safetensors")
    if accelerator.is_main_process:
        save_mapper(accelerator, stage, final, config.steps, config)
    accelerator.wait_for_everyone()
    if config.steps > start:
        validate(config.steps)
    accelerator.end_training()
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
        accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision, project_dir=config.output_dir,
                                  gradient_accumulation_steps=config.gradient_accumulation,
                                  log_with=tensorboard_logging() if config.validation_images else None)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        models = load_models(config.pretrained, config.image_encoder, accelerator.device, dtype, config.config,
                             config.tokenizer)
        if config.gradient_checkpointing:
            models[0].enable_gradient_checkpointing()
        dataset = open_dataset(config.data, config.stage, config.resolution, vae_downscale(models[1]),
                               config.data_layout, config.split, config.clamp_object_resize)
        path = train(accelerator, models, dataset, config)
    except DataError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        full = disk_full(exc, config.output_dir)
        if full is None:
            raise
        log.error("%s The last complete checkpoint stays: continue with --resume latest.", full)
        return 2
    except TrainingStopped:
        return 130
    log.info("done: %s (put it in ComfyUI/models/elite/ and load it with the ELITE %s Mapper Loader)", path,
             config.stage.capitalize())
    return 0


if __name__ == "__main__":
    sys.exit(main())
