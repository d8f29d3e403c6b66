"""Tiny, seeded, random models in the real SD1.x layouts, built with ComfyUI's own classes.

* UNet: the SD1.5 block topology and state-dict keys (16 attn2 sites, context 768) at
  model_channels 32 instead of 320.
* CLIP text: ComfyUI's SD1 CLIP with its real tokenizer, width 768, two layers (or the real 12).
* VAE: the SD VAE layout at 32 channels (8x down/up-scaling, 4 latent channels).
* CLIP vision: the ViT-L/14 layer count and token count (24 layers, 257 tokens at 224 px), width 64.
* ELITE mappers: the official key names at widths 64 -> 64 -> 768 with K/V widths 32/64/128.

ComfyUI builds modules without initialising weights, so every builder seeds its own init.
These are test and demo fixtures; no real model weights are involved.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

TINY_MODEL_CHANNELS = 32
TINY_VISION_WIDTH = 64
TEXT_WIDTH = 768


def seeded_init_(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Fill every parameter deterministically: norms get weight 1 / bias 0, the rest N(0, std)."""
    gen = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    with torch.no_grad():
        for mod in module.modules():
            for name, param in mod.named_parameters(recurse=False):
                if param is None:
                    continue
                if isinstance(mod, norm_types):
                    param.fill_(1.0 if name == "weight" else 0.0)
                else:
                    param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * std)
    return module


def tiny_sd15_unet_config() -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4,
        "model_channels": TINY_MODEL_CHANNELS, "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": TEXT_WIDTH,
        "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def build_tiny_sd15_model(seed: int = 0, dtype: torch.dtype = torch.float32, std: float = 0.05, **unet_overrides):
    """A ModelPatcher around a tiny SD1.5-layout UNet; overrides (e.g. context_dim) change the config.
    A larger ``std`` makes its output depend more on the text context."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15({**tiny_sd15_unet_config(), **unet_overrides})
    config.set_inference_dtype(dtype, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    seeded_init_(base.diffusion_model, seed, std=std)
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


TINY_CLIP_TEXT = {"num_hidden_layers": 2, "intermediate_size": 256, "num_attention_heads": 4}


def build_tiny_clip(seed: int = 1, real_size: bool = False, std: float = 0.02, embedding_directory=None):
    """ComfyUI's SD1 CLIP with its real tokenizer: two small layers, or (``real_size``) the real
    CLIP-L text encoder (12 layers, 768 wide, 12 heads, MLP 3072) with random weights.
    ``embedding_directory``: where its tokenizer finds ``embedding:<name>`` files."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(
        target,
        embedding_directory=embedding_directory,
        model_options={
            "dtype": torch.float32,
            "clip_l_model_config": {} if real_size else dict(TINY_CLIP_TEXT),
        },
    )
    seeded_init_(clip.cond_stage_model, seed, std=std)
    return clip


def build_tiny_vae(seed: int = 2):
    import comfy.sd

    config = {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
    vae = comfy.sd.VAE(sd={}, config=config, dtype=torch.float32)
    seeded_init_(vae.first_stage_model, seed)
    return vae


def tiny_clip_vision_config() -> dict:
    return {
        "hidden_act": "quick_gelu", "hidden_size": TINY_VISION_WIDTH, "image_size": 224,
        "intermediate_size": 128, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
        "num_attention_heads": 4, "num_channels": 3, "num_hidden_layers": 24, "patch_size": 14,
        "projection_dim": 32,
    }


def build_tiny_clip_vision(seed: int = 3, stored_dtype: torch.dtype | None = torch.float32):
    """Weights stored in fp32 by default so tests can compare exactly; ``stored_dtype=None`` keeps
    ComfyUI's own choice (fp16, computed through manual-cast layers, as for a real CLIP_VISION)."""
    import comfy.clip_vision

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tiny_clip_vision.json")
        with open(path, "w") as f:
            json.dump(tiny_clip_vision_config(), f)
        clip_vision = comfy.clip_vision.ClipVisionModel(path)
    default_dtype = next(clip_vision.model.parameters()).dtype
    clip_vision.model.to(torch.float32)
    seeded_init_(clip_vision.model, seed, std=0.1)
    clip_vision.model.to(stored_dtype or default_dtype)
    return clip_vision


def tiny_mapper_state_dict(seed: int, input_dim: int = TINY_VISION_WIDTH, hidden_dim: int = 64,
                           model_channels: int = TINY_MODEL_CHANNELS) -> dict[str, torch.Tensor]:
    """A random mapper state dict with the official key names (ELITE's Appendix A layout)."""
    from .pack_import import elite_core_module

    mappers = elite_core_module("elite.mappers")
    sites = elite_core_module("elite.sites")
    widths = mappers.MapperWidths(
        input_dim=input_dim, hidden_dim=hidden_dim, output_dim=TEXT_WIDTH,
        kv_dims=tuple(model_channels * s.base_channels_mult for s in sites.SD1_ATTN2_SITES),
    )
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in mappers.expected_keys(widths).items():
        is_norm = key.split(".")[-2] in ("1", "4")  # the LayerNorms of each MLP
        if is_norm and key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 2:
            state[key] = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state
