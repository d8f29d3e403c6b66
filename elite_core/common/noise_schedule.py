"""SD1.x's training noise schedule and the DDPM forward process, shared by the trainers.

    betas = linspace(sqrt 0.00085, sqrt 0.012, 1000)^2        ("scaled linear", computed in float64)
    z_t   = sqrt(a_t) z0 + sqrt(1 - a_t) eps,  a_t = prod_{s<=t} (1 - beta_s)

The sqrt tables are kept in float32, as the reference trainers register them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


class NoiseSchedule(NamedTuple):
    sqrt_alpha_bar: torch.Tensor  # (1000,) fp32
    sqrt_one_minus_alpha_bar: torch.Tensor


def scaled_linear_schedule(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> NoiseSchedule:
    """SD1.x's training schedule: betas linspace(sqrt 0.00085, sqrt 0.012)^2, computed in float64."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    return NoiseSchedule(alpha_bar.sqrt().float(), (1.0 - alpha_bar).sqrt().float())


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps, per sample."""
    shape = (-1,) + (1,) * (latents.dim() - 1)
    a = schedule.sqrt_alpha_bar.to(latents.device)[timesteps].view(shape)
    b = schedule.sqrt_one_minus_alpha_bar.to(latents.device)[timesteps].view(shape)
    return a * latents + b * noise
