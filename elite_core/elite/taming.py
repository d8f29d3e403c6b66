"""Two training options from the Taming Encoder (Jia et al., 2023, arXiv 2304.02642), off by default.
Their details are not public; these are this pack's readings of the paper's description.

* Identity preservation: the UNet's denoised estimate x0^ = (z_t - sqrt(1 - a_t) eps^) / sqrt(a_t),
  decoded by the frozen VAE, should look like the reference object to a frozen image encoder:
  ``weight * mean_b [t_b <= max_timestep] * (1 - cos(f(decode(x0^)), f(reference)))``, with f the
  CLIP vision model's pooled embedding. Large t are left out: their x0^ is mostly noise.
* Regularised joint training (:class:`elite_core.elite.objectives.GlobalStage`'s ``plain`` batch):
  plain caption batches without the concept go through the same UNet (with the K/V being trained)
  and add ``weight * eps-MSE``, so prompts without the placeholder keep working as the base model
  made them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common.images import CLIP_MEAN, CLIP_STD
from ..common.noise_schedule import NoiseSchedule
from .objectives import LATENT_SCALE


def denoised_latents(noisy: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor,
                     schedule: NoiseSchedule) -> torch.Tensor:
    """x0^ from z_t and the predicted noise (the inverse of the DDPM forward process)."""
    shape = (-1,) + (1,) * (noisy.dim() - 1)
    a = schedule.sqrt_alpha_bar.to(noisy.device)[timesteps].view(shape)
    b = schedule.sqrt_one_minus_alpha_bar.to(noisy.device)[timesteps].view(shape)
    return (noisy - b * eps) / a


def clip_pixels(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Decoded images in [-1, 1] -> the CLIP vision input (bicubic to size x size, normalised)."""
    images = F.interpolate((images.float() + 1.0) / 2.0, size=(size, size), mode="bicubic", align_corners=False,
                           antialias=True).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class IdentityLoss:
    """The identity-preservation term. Holds the frozen VAE and image encoder by reference (they are
    not parameters of the stage that uses it)."""

    def __init__(self, vae: nn.Module, image_encoder: nn.Module, weight: float, max_timestep: int = 400):
        self.vae, self.image_encoder = vae, image_encoder
        self.weight, self.max_timestep = weight, max_timestep

    def embed(self, pixels_clip: torch.Tensor) -> torch.Tensor:
        encoder = self.image_encoder
        return encoder(pixel_values=pixels_clip.to(next(encoder.parameters()).dtype)).pooler_output.float()

    def __call__(self, noisy: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, reference_clip: torch.Tensor,
                 schedule: NoiseSchedule) -> torch.Tensor:
        keep = (timesteps <= self.max_timestep).float()
        if not keep.any():
            return eps.sum() * 0.0
        x0 = denoised_latents(noisy.float(), eps.float(), timesteps, schedule)
        decoded = self.vae.decode((x0 / LATENT_SCALE).to(next(self.vae.parameters()).dtype)).sample
        with torch.no_grad():
            target = self.embed(reference_clip)
        similarity = F.cosine_similarity(self.embed(clip_pixels(decoded)), target, dim=-1)
        return self.weight * ((1.0 - similarity) * keep).mean()
