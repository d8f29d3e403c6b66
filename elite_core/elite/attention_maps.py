"""Where the concept goes: the placeholder's attention map, as ELITE's local branch uses it for its
gate (docs/reference/elite.md §7), averaged over the heads, the 16 cross-attention layers and the sampling
steps where the local branch is active.

Each layer sees the latent at its own resolution (64, 32, 16 or 8 rows for 512 px); its map is
resized (bilinear) to the latent's size before averaging. Recording is opt-in: without a recorder
the attention patch computes nothing extra.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def layer_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, columns) of a layer with ``tokens`` positions over a (height, width) latent: the
    UNet halves the size (rounding up) at each level."""
    for level in range(6):
        rows, cols = math.ceil(height / 2 ** level), math.ceil(width / 2 ** level)
        if rows * cols == tokens:
            return rows, cols
    raise ValueError(f"{tokens} attention positions do not tile a {height}x{width} latent")


class AttentionRecorder:
    """Sums the placeholder gate of every layer call (positive rows only) at the latent's size. A new
    sampling run (the noise level going up again) starts a new sum."""

    def __init__(self):
        self.total: torch.Tensor | None = None  # (b, H, W) fp32 on the CPU
        self.count = 0
        self._last_sigma = math.inf

    def __deepcopy__(self, memo):  # shared by every clone of the MODEL that carries it
        return self

    def reset(self) -> None:
        self.total, self.count, self._last_sigma = None, 0, math.inf

    def add(self, gate: torch.Tensor, latent_size: tuple[int, int], sigma: float | None = None) -> None:
        """``gate`` (b, heads, n): the normalised placeholder probability of one layer call."""
        if sigma is not None:
            if sigma > self._last_sigma:
                self.reset()
            self._last_sigma = sigma
        height, width = latent_size
        rows, cols = layer_grid(gate.shape[-1], height, width)
        layer = gate.float().mean(dim=1).view(-1, 1, rows, cols)
        if (rows, cols) != (height, width):
            layer = F.interpolate(layer, size=(height, width), mode="bilinear", align_corners=False)
        layer = layer[:, 0].detach().cpu()
        if self.total is None or self.total.shape != layer.shape:
            self.total, self.count = torch.zeros_like(layer), 0
        self.total += layer
        self.count += 1

    def mean(self) -> torch.Tensor | None:
        """(b, H, W) in [0, 1], or None when nothing was recorded (no placeholder in the prompt, or
        the local branch never active)."""
        return None if self.total is None or self.count == 0 else (self.total / self.count).clamp(0, 1)


def overlay(images: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """IMAGE (b, H, W, 3) with the map (b, H, W) shown: dimmed where the concept does not go, tinted
    warm where it does."""
    a = attention[..., None].to(images.dtype)
    warm = torch.tensor([1.0, 0.45, 0.1], dtype=images.dtype)
    return (images * (0.3 + 0.7 * a) * (1 - 0.35 * a) + warm * 0.35 * a).clamp(0, 1)
