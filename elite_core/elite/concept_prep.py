"""Concept preparation: from a photo and its object mask to the crop ELITE's encoder should see.

ELITE squashes the whole concept image to 224 x 224 (docs/reference/elite.md §2), so an off-centre or small
object loses most of its CLIP patches to the background. Preparing crops around the object with a
margin, then either leaves the crop as it is (the encoder squashes it, as the reference does) or
pads it to a square with black so the object keeps its aspect ratio. Geometry comes from
torchvision (``masks_to_boxes``, ``crop``, ``pad``).

Mask polarity: ComfyUI's Load Image gives 1 where the image is transparent, i.e. on the background;
a hand-painted mask is usually 1 on the object. "auto" takes the side that covers most of the image
border to be the background (a mask that covers the whole image stays the object).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import masks_to_boxes
from torchvision.transforms.v2 import functional as TF

from ..common.images import squash_uint8
from .clip_input import PATCH_GRID, mask_patch_grid, prepare_object_mask

FITS = ("squash", "pad")
POLARITIES = ("auto", "white is the object", "white is the background")


class PrepareError(ValueError):
    """The inputs cannot be prepared; the message says what to change."""


def object_mask(mask: torch.Tensor | None, image: torch.Tensor, polarity: str = "auto") -> torch.Tensor:
    """(B, H, W) in {0, 1}, 1 on the object, for IMAGE (B, H, W, C); no mask = the whole image."""
    if polarity not in POLARITIES:
        raise PrepareError(f"mask_polarity must be one of {POLARITIES}, got {polarity!r}.")
    try:
        binary = prepare_object_mask(mask, image, invert=polarity == "white is the background")
    except ValueError as exc:
        raise PrepareError(str(exc)) from None
    if polarity == "auto" and _border_mean(binary) > 0.5 and bool((binary < 1).any()):
        binary = 1.0 - binary  # (auto keeps a mask that covers the whole photo)
    return binary


def _border_mean(mask: torch.Tensor) -> float:
    border = torch.cat([mask[:, 0, :], mask[:, -1, :], mask[:, :, 0], mask[:, :, -1]], dim=1)
    return float(border.mean())


def crop_box(mask: torch.Tensor, margin: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the object's box in one (H, W) mask, grown by ``margin`` x the
    box's height (top and bottom) and width (left and right), rounded up, within the image."""
    if not mask.any():
        raise PrepareError("The mask marks no object (it is empty after the polarity is applied). Paint the object "
                           "white, or set mask_polarity to match your mask.")
    x0, y0, x1, y1 = masks_to_boxes(mask[None].bool()).tolist()[0]  # inclusive pixel extremes
    x0, y0, x1, y1 = int(x0), int(y0), int(x1) + 1, int(y1) + 1
    dy, dx = math.ceil(margin * (y1 - y0)), math.ceil(margin * (x1 - x0))
    height, width = mask.shape
    top, left = max(y0 - dy, 0), max(x0 - dx, 0)
    return top, left, min(y1 + dy, height) - top, min(x1 + dx, width) - left


def prepare_concept(image: torch.Tensor, mask: torch.Tensor | None, margin: float = 0.1, fit: str = "squash",
                    polarity: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE (1, h, w, 3), MASK (1, h, w)): the crop around the object (one image) and its mask,
    padded to a square with black / 0 when ``fit`` is "pad"."""
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[-1] < 3:
        raise PrepareError(f"Prepare takes one IMAGE (1, height, width, 3); got {tuple(image.shape)}. "
                           "Split a batch with an Image From Batch node first.")
    if fit not in FITS:
        raise PrepareError(f"fit must be one of {FITS}, got {fit!r}.")
    if not 0.0 <= margin <= 2.0:
        raise PrepareError(f"margin is a fraction of the object's size between 0 and 2, got {margin}.")
    binary = object_mask(mask, image, polarity)[:1]
    top, left, height, width = crop_box(binary[0], margin)
    pixels = TF.crop(image[..., :3].movedim(-1, 1), top, left, height, width)  # (1, 3, h, w)
    cropped = TF.crop(binary[:, None], top, left, height, width)
    if fit == "pad" and height != width:
        side = max(height, width)
        padding = [(side - width) // 2, (side - height) // 2, side - width - (side - width) // 2,
                   side - height - (side - height) // 2]  # left, top, right, bottom
        pixels, cropped = TF.pad(pixels, padding, fill=0.0), TF.pad(cropped, padding, fill=0.0)
    return pixels.movedim(1, -1).contiguous(), cropped[:, 0].contiguous()


def encoder_view(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ELITE's encoder sees of a prepared concept: the 224 x 224 squashed pixels in [0, 1]
    (1, 3, 224, 224) and the 16 x 16 patch grid the local branch keeps (1, 16, 16)."""
    return squash_uint8(image, 224), mask_patch_grid(mask).view(mask.shape[0], PATCH_GRID, PATCH_GRID)


def preview(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """IMAGE (1, 224, 448, 3): the encoder's 224 x 224 input, and beside it the same with the patches
    the local branch drops darkened and the 16 x 16 grid drawn."""
    pixels, grid = encoder_view(image, mask)
    kept = grid.repeat_interleave(14, dim=1).repeat_interleave(14, dim=2)[:, None]  # (1, 1, 224, 224)
    tokens = pixels * (0.25 + 0.75 * kept)
    lines = torch.zeros(224, dtype=torch.bool)
    lines[::14] = True
    tokens[:, :, lines, :] = 0.5
    tokens[:, :, :, lines] = 0.5
    return torch.cat([pixels, tokens], dim=3).movedim(1, -1)
