"""Validation images for the ELITE trainer, sampled from the mappers being trained with the reference's
settings (docs/reference/elite.md §8, §9.3): "a photo of a S" with w0 injected, the unconditional prompt ""
without injection, separate conditional and unconditional UNet passes, CFG 5, diffusers'
LMSDiscreteScheduler (scaled-linear β 0.00085 → 0.012) for 100 steps, the latent noise from a CPU
generator seeded with ``seed``, VAE decode of z / 0.18215. The local stage adds its local branch, at
``scale`` (λ), to the conditional pass only.

    samples = validation_samples(dataset, count=4, seed=config.seed)
    images = validation_images(accelerator.unwrap_model(stage), models, samples)   # main process
    save_validation(images, config.output_dir, step, tensorboard_tracker(accelerator))

Sampling uses the stage's own attention processors and leaves the training state as it found it:
no gradients, the mappers' train/eval modes restored, the global RNG untouched.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from elite_core.common.files import write_atomically
from elite_core.elite.objectives import LATENT_SCALE, injected_words, object_token_mask, vision_features

from .data.samples import PLACEHOLDER, sample_generator

log = logging.getLogger("elite.train.validation")

PROMPT = f"a photo of a {PLACEHOLDER}"
VALIDATION_STEP = -1  # the sample_generator step of the validation samples: no training step draws it


class ValidationModels(NamedTuple):
    """The frozen models, in the order the trainer's ``load_models`` returns them."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    image_encoder: nn.Module


def lms_scheduler():
    """The reference's sampler: LMS over SD's scaled-linear schedule."""
    from diffusers import LMSDiscreteScheduler

    return LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000)


def validation_samples(dataset, count: int = 4, seed: int = 0) -> list:
    """The first ``count`` objects of ``dataset`` with fixed draws: the same samples at every checkpoint."""
    return [dataset.sample(i, sample_generator(seed, VALIDATION_STEP, i)) for i in range(min(count, len(dataset)))]


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """(1, 77) ids of a transformers CLIP tokenizer, padded as the reference pads."""
    return tokenizer([prompt], padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids


def placeholder_position(tokenizer, ids: torch.Tensor) -> int:
    """The token index of the placeholder "S" in ``ids`` (1, 77)."""
    (token,) = tokenizer(PLACEHOLDER, add_special_tokens=False).input_ids
    found = (ids[0] == token).nonzero().flatten()
    if len(found) == 0:
        raise ValueError(f"the prompt has no placeholder token {PLACEHOLDER!r}")
    return int(found[0])


@contextlib.contextmanager
def _evaluating(*modules: nn.Module):
    """Within: ``modules`` in eval mode; afterwards every submodule has its own previous mode back."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB image, as the reference rounds it."""
    array = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def side_by_side(generated: Image.Image, source: Image.Image) -> Image.Image:
    """The generated image left of the input, resized to its size (as the reference saves them)."""
    source = source.resize(generated.size, Image.BICUBIC)
    pair = Image.new("RGB", (generated.width * 2, generated.height))
    pair.paste(generated, (0, 0))
    pair.paste(source, (generated.width, 0))
    return pair


@torch.no_grad()
def validation_images(stage, models, samples, *, steps: int = 100, guidance: float = 5.0, seed: int = 42,
                      scale: float = 1.0) -> list[Image.Image]:
    """One image per sample: generated (left) next to the sample's ``pixels`` (right), at its resolution.

    ``stage``: the unwrapped ``GlobalStage`` or ``LocalStage`` (its processors are on ``models.unet``).
    ``models``: (unet, vae, text_encoder, tokenizer, image_encoder), transformers CLIP tokenizer.
    ``samples``: objects with ``pixels`` (3, r, r) in [-1, 1] and ``pixels_clip`` (3, 224, 224); for the
    local stage also ``pixels_object`` and ``object_segmentation``. ``scale``: λ of the local branch
    (training's 1; the reference's inference uses 0.8). Every image starts from the same noise,
    ``torch.manual_seed(seed)``'s, as the reference's inference does per image.
    """
    unet, vae, text_encoder, tokenizer, image_encoder = ValidationModels(*models)
    local = hasattr(stage, "local_mapper")
    global_mapper = stage.global_mapper if local else stage.mapper
    weight = next(unet.parameters())
    device, dtype = weight.device, weight.dtype
    # mixed precision: fp32 mappers with half-precision models, as the training step runs them
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    ids = prompt_ids(tokenizer, PROMPT).to(device)
    index = torch.tensor([placeholder_position(tokenizer, ids.cpu())], device=device)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    images = []
    with _evaluating(stage, global_mapper), autocast:
        uncond = text_encoder(input_ids=prompt_ids(tokenizer, "").to(device))[0]
        for sample in samples:
            features = vision_features(image_encoder, sample.pixels_clip[None].to(device, dtype))
            with injected_words(text_encoder, index, global_mapper(features)[:, :1]):
                cond = text_encoder(input_ids=ids)[0]
            cond_inputs = uncond_inputs = contextlib.nullcontext
            if local:  # the local branch for the conditional pass; none for the unconditional one
                object_features = vision_features(image_encoder, sample.pixels_object[None].to(device, dtype))
                tokens = stage.local_mapper(object_features) * object_token_mask(
                    sample.object_segmentation[None].to(device, dtype))
                cond_inputs = functools.partial(stage.local_inputs, tokens, index, scale)
                uncond_inputs = functools.partial(stage.local_inputs, None, None)

            def predict(x, t):
                with cond_inputs():
                    eps_cond = unet(x, t, encoder_hidden_states=cond).sample
                with uncond_inputs():
                    eps_uncond = unet(x, t, encoder_hidden_states=uncond).sample
                return eps_uncond + guidance * (eps_cond - eps_uncond)

            side = sample.pixels.shape[-1] // down
            latents = _sample(predict, (1, unet.config.in_channels, side, side), steps, seed, device, dtype)
            decoded = vae.decode(latents / LATENT_SCALE).sample[0]
            images.append(side_by_side(to_pil(decoded), to_pil(sample.pixels)))
    return images


def _sample(predict, shape, steps: int, seed: int, device, dtype) -> torch.Tensor:
    scheduler = lms_scheduler()
    scheduler.set_timesteps(steps, device=device)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = predict(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def validation_grid(images: list[Image.Image]) -> Image.Image:
    """The images stacked top to bottom."""
    grid = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)))
    top = 0
    for image in images:
        grid.paste(image, (0, top))
        top += image.height
    return grid


def save_validation(images: list[Image.Image], output_dir: str, step: int, tracker=None) -> str:
    """Write ``validation/step_{step:06d}.png`` under ``output_dir`` and, given accelerate's TensorBoard
    tracker, log the grid as the image "validation" at ``step``. Returns the PNG's path."""
    grid = validation_grid(images)
    folder = os.path.join(output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step_{step:06d}.png")
    write_atomically(path, lambda partial: grid.save(partial, format="PNG"))
    if tracker is not None:
        tracker.log_images({"validation": np.asarray(grid)[None]}, step=step, dataformats="NHWC")
        tracker.tracker.flush()
    log.info("validation images: %s", path)
    return path


def tensorboard_logging() -> str | None:
    """"tensorboard" for ``Accelerator(log_with=...)`` when TensorBoard is installed; otherwise None,
    with a warning (the validation PNGs are still written)."""
    if importlib.util.find_spec("tensorboard") is None:
        log.warning("TensorBoard is not installed (pip install tensorboard): no TensorBoard logs, validation PNGs only")
        return None
    return "tensorboard"


def tensorboard_tracker(accelerator):
    """The accelerator's TensorBoard tracker, or None (TensorBoard off, or not the main process)."""
    return next((t for t in accelerator.trackers if t.name == "tensorboard"), None)
