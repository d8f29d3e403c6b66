"""What one optimizer step of the ELITE trainer trains on: each process's share of the global batch,
with every draw (record, augmentations, caption, posterior noise, diffusion noise, timestep) taken
from a generator seeded by the run's seed and the sample's place in the global batch, so N processes
x batch b see exactly the samples of 1 process x N*b, and a resumed run those it would have seen."""

from __future__ import annotations

import functools

import torch

from elite_core.common.noise_schedule import NUM_TRAIN_TIMESTEPS
from elite_core.elite.objectives import posterior_sample

from .samples import reference_placeholder_index, sample_generator


def vae_downscale(vae) -> int:
    """Pixels per latent of a diffusers AutoencoderKL (8 for the SD VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, size: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()


PLAIN_STREAM = 104_729  # seeds the plain caption batches apart from the concept batches


def micro_batch(dataset, tokenizer, vae, step: int, micro: int, config, rank: int, world: int, device, dtype,
                plain_data=None):
    """The samples of this process in micro-step ``micro`` of optimizer step ``step``, with their draws
    (and, with ``plain_data``, as many plain caption samples under ``plain``)."""
    per_step = config.batch_size * config.gradient_accumulation * world
    first = (micro * world + rank) * config.batch_size
    rows, plain_rows = [], []
    for position in range(first, first + config.batch_size):
        counter = step * per_step + position
        index = epoch_order(config.seed, counter // len(dataset), len(dataset))[counter % len(dataset)]
        gen = sample_generator(config.seed, step, position)
        rows.append((dataset.sample(index, gen), *diffusion_draws(vae, config.resolution, gen)))
        if plain_data is not None:
            order = epoch_order(config.seed + PLAIN_STREAM, counter // len(plain_data), len(plain_data))
            index = order[counter % len(plain_data)]
            gen = sample_generator(config.seed + PLAIN_STREAM, step, position)
            plain_rows.append((plain_data.sample(index), *diffusion_draws(vae, config.resolution, gen)))
    batch, captions = diffusion_batch(rows, tokenizer, vae, device, dtype)
    stack = lambda name: torch.stack([getattr(row[0], name) for row in rows]).to(device, dtype)  # noqa: E731
    batch.update(pixels_clip=stack("pixels_clip"),
                 placeholder_index=torch.tensor([reference_placeholder_index(c) for c in captions], device=device))
    if config.stage == "local":
        batch.update(pixels_object=stack("pixels_object"), object_segmentation=stack("object_segmentation"),
                     mask=torch.stack([row[0].mask for row in rows]).to(device))
    if plain_rows:
        batch["plain"] = diffusion_batch(plain_rows, tokenizer, vae, device, dtype)[0]
    return batch


def diffusion_draws(vae, resolution: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A sample's posterior noise, diffusion noise and timestep."""
    latent = resolution // vae_downscale(vae)
    shape = (vae.config.latent_channels, latent, latent)
    posterior, diffusion = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)  # in this order
    return posterior, diffusion, int(torch.randint(NUM_TRAIN_TIMESTEPS, (1,), generator=gen))


def diffusion_batch(rows, tokenizer, vae, device, dtype) -> tuple[dict[str, torch.Tensor], list[str]]:
    """latents (a posterior sample of each row's pixels), noise, timesteps and input_ids of (sample, draws) rows."""
    captions = [row[0].caption for row in rows]
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    pixels = torch.stack([row[0].pixels for row in rows]).to(device, dtype)
    with torch.no_grad():
        latents = posterior_sample(vae, pixels, torch.stack([row[1] for row in rows]).to(device, dtype)).float()
    return dict(latents=latents, noise=torch.stack([row[2] for row in rows]).to(device),
                timesteps=torch.tensor([row[3] for row in rows], device=device), input_ids=ids.to(device)), captions
