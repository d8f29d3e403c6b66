"""CLIP vision input and layer selection, as ELITE's reference inference does it.

Preprocessing (reference ``CustomDatasetWithBG``): the whole image is squashed to 224x224 (no crop,
aspect ratio not kept) with PIL's bicubic filter on uint8 pixels, scaled to [0, 1] and normalised
with CLIP's mean/std. ComfyUI IMAGE tensors hold uint8/255 values, so rounding recovers the exact
uint8 input and this path is bit-identical to the reference's.

Layers: ELITE reads the outputs of transformer blocks 24 (last), 4, 8, 12 and 16 of ViT-L/14, in
that order (word 0 comes from block 24).
"""

from __future__ import annotations

import torch

from ..common.file_kinds import ELITE_CLIP_VISION_FILE, clip_vision_size
from ..common.images import CLIP_SIZE, clip_normalise, squash_uint8

VIT_L14_LAYERS = 24
VIT_L14_TOKENS = 257  # CLS + 16x16 patches at 224 px
ELITE_BLOCKS = (24, 4, 8, 12, 16)  # 1-based transformer block numbers, in word order


def squash_to_clip_input(image: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> normalised CLIP pixels (B, 3, size, size), PIL bicubic like the reference."""
    return clip_normalise(squash_uint8(image, size))


def select_elite_layers(all_hidden: torch.Tensor) -> list[torch.Tensor]:
    """Pick ELITE's five layers from all block outputs (B, 24, tokens, width), in word order.

    ``all_hidden[:, j]`` is the output of block ``j + 1`` (the embeddings are not included).
    """
    if all_hidden.dim() != 4 or all_hidden.shape[1] != VIT_L14_LAYERS:
        raise ValueError(f"Expected the outputs of all {VIT_L14_LAYERS} blocks, got {tuple(all_hidden.shape)}.")
    return [all_hidden[:, block - 1] for block in ELITE_BLOCKS]


def describe_vision_mismatch(num_layers: int, num_tokens: int, width: int, mapper_width: int) -> str | None:
    """Why a CLIP vision model cannot feed an ELITE mapper, or None when it can."""
    load = (f"Load {ELITE_CLIP_VISION_FILE} (OpenAI's CLIP ViT-L/14, in models/clip_vision; see the README's model "
            "table) with Load CLIP Vision.")
    if num_layers != VIT_L14_LAYERS or num_tokens != VIT_L14_TOKENS:
        return (
            f"This CLIP vision model is {clip_vision_size(num_layers, num_tokens, width)}; ELITE needs CLIP ViT-L/14 "
            f"({VIT_L14_LAYERS} layers, {VIT_L14_TOKENS} tokens at 224 px, 1024 wide). {load}"
        )
    if width != mapper_width:
        return (
            f"This CLIP vision model is {width} wide, but the ELITE mapper expects {mapper_width}-wide "
            f"features (CLIP ViT-L/14 is 1024 wide). "
            + (load if width != 1024 else "The mapper file was not made for CLIP ViT-L/14: use ELITE's mappers.")
        )
    return None


PATCH_GRID = 16  # 224 / 14


def prepare_object_mask(mask: torch.Tensor | None, image: torch.Tensor, invert: bool) -> torch.Tensor:
    """A binary object mask (B, H, W) matching IMAGE (B, H, W, C): object = 1, background = 0.

    ``None`` means the whole image is the object. Soft masks are thresholded at 0.5 (the reference
    reads {0, 255} masks, for which any threshold gives the same result). A mask of another size is
    resized to the image; a single mask applies to every image of the batch.
    """
    batch, height, width = image.shape[:3]
    if mask is None:
        return torch.ones(batch, height, width)
    mask = mask.detach().float().cpu()
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValueError(f"Expected a MASK of shape (batch, height, width), got {tuple(mask.shape)}.")
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"The MASK batch ({mask.shape[0]}) must be 1 or match the IMAGE batch ({batch}).")
    if invert:
        mask = 1.0 - mask
    if mask.shape[1:] != (height, width):
        mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear").squeeze(1)
    return (mask > 0.5).float().expand(batch, height, width)


def object_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The object on black: IMAGE x mask at full resolution, before any resizing (reference step 2)."""
    return image[..., :3] * mask.unsqueeze(-1).to(image.dtype)


def mask_patch_grid(mask: torch.Tensor) -> torch.Tensor:
    """Nearest-resize the mask to CLIP's 16x16 patch grid, row-major: (B, 256, 1).

    Source pixel ``floor(k * H / 16)`` is taken for patch row k, as the reference's 128 -> 16
    two-step nearest resize does for every input size.
    """
    grid = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(PATCH_GRID, PATCH_GRID), mode="nearest")
    return grid.flatten(1).unsqueeze(-1)
