"""Images between ComfyUI's IMAGE layout, uint8 pixels and PIL, and CLIP's input normalisation:
shared by ELITE's concept encoding, CatVersion's training and the evaluation's encoders.

An IMAGE is (batch, height, width, channels) floats in [0, 1]; images loaded from files hold
uint8/255 values, so rounding recovers the exact uint8 pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE (B, H, W, C) floats in [0, 1] -> uint8 array (B, H, W, 3)."""
    if image.dim() != 4 or image.shape[-1] < 3:
        raise ValueError(f"Expected an IMAGE of shape (batch, height, width, 3), got {tuple(image.shape)}.")
    rgb = image[..., :3].detach().float().cpu().clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8).numpy()


def images_to_pil(image: torch.Tensor) -> list[Image.Image]:
    """IMAGE (B, H, W, C) or one image (H, W, C), floats 0..1 -> RGB PIL images (uint8, rounded),
    so images from ComfyUI get exactly the preprocessing of image files."""
    frames = image_to_uint8(image if image.dim() == 4 else image.unsqueeze(0))
    return [Image.fromarray(frame, mode="RGB") for frame in frames]


def pil_to_image(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> IMAGE (1, H, W, 3) floats in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def squash_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, 3, size, size) in [0, 1]: each frame squashed (no crop, aspect not
    kept) with PIL's bicubic filter on its uint8 pixels, as the reference data loaders do."""
    pixels = []
    for frame in image_to_uint8(image):
        resized = Image.fromarray(frame, mode="RGB").resize((size, size), Image.BICUBIC)
        pixels.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0))
    return torch.stack(pixels).permute(0, 3, 1, 2)


def clip_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [0, 1] -> CLIP's normalised input (its mean and std per channel)."""
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std
