"""Tiny, seeded, RANDOM diffusers/transformers models in the SD1.x layouts, as the command-line
trainers load them, for the training tests; and the mapper widths and token batches that fit them.

* UNet: diffusers' UNet2DConditionModel in the SD1.5 block layout (16 attn2 sites, context 768) at
  block widths 32/64/128/128, the same layout as tiny_models' ComfyUI UNet;
* CLIP text: 768 wide, 2 layers; CLIP vision: ViT-L/14's 24 layers and 257 tokens, 64 wide;
* VAE: two levels, 32 channels.

No real model weights are involved.
"""

from __future__ import annotations

import torch

from .pack_import import elite_core_module
from .tiny_models import TINY_VISION_WIDTH, seeded_init_, tiny_clip_vision_config


def tiny_diffusers_unet(seed: int = 0):
    """A diffusers UNet in the SD1.5 block layout at width 32 (ComfyUI's key map takes its weights)."""
    import diffusers

    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    return seeded_init_(unet, seed, std=0.05).eval()


def build_training_models():
    """UNet (SD1.5 block layout), CLIP text (768 wide, 2 layers), CLIP vision (ViT-L/14's 24 layers
    and 257 tokens, 64 wide), VAE: tiny, seeded, RANDOM weights; and ComfyUI's CLIP tokenizer."""
    import diffusers
    import transformers

    import comfy.sd1_clip

    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu"))
    vision_config = {k: v for k, v in tiny_clip_vision_config().items() if k != "model_type"}
    vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision_config))
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32)
    for i, module in enumerate((text, vision, vae)):
        seeded_init_(module, 20 + i, std=0.05).eval()
    unet = tiny_diffusers_unet(seed=4)
    for module in (unet, text, vision, vae):  # frozen, as the trainer has them
        module.requires_grad_(False)
    return unet, text, vision, vae, comfy.sd1_clip.SD1Tokenizer()


def tiny_mapper_widths(unet):
    """MapperWidths for a mapper on the tiny CLIP vision (64 wide) whose K/V fit ``unet``'s attn2."""
    objectives, mappers, sites = (elite_core_module(m) for m in ("elite.objectives", "elite.mappers", "elite.sites"))
    kv = tuple(objectives.attn2_modules(unet)[site.ckpt_prefix].to_k.weight.shape[0] for site in sites.SD1_ATTN2_SITES)
    return mappers.MapperWidths(input_dim=TINY_VISION_WIDTH, hidden_dim=64, output_dim=768, kv_dims=kv)


def token_batch(tokenizer, prompts):
    """ComfyUI's SD1 tokenizer on ``prompts``: the (B, 77) token ids and the index of S in each row."""
    ids, index = [], []
    for prompt in prompts:
        row = [t[0] for t in tokenizer.tokenize_with_weights(prompt)["l"][0]]
        ids.append(row)
        index.append(row.index(tokenizer.tokenize_with_weights("S")["l"][0][1][0]))
    return torch.tensor(ids), torch.tensor(index)
