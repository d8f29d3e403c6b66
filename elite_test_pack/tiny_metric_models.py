"""Tiny seeded metric encoders in the real Hugging Face layouts (RANDOM weights): CLIP (for the real
CLIP tokenizer that ComfyUI ships), DINO ViT and DINOv2; for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import seeded_init_


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 1, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    vision = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    return seeded_init_(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=48)), 20, 0.05).eval()


def tiny_dino():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                       image_size=224, patch_size=16, layer_norm_eps=1e-12, hidden_act="gelu")
    return seeded_init_(ViTModel(config), 21, 0.05).eval()  # with the pooler, which the loader drops


def tiny_dinov2():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          image_size=98, patch_size=14, layer_norm_eps=1e-6)  # 7x7 grid, interpolated to 16x16
    return seeded_init_(Dinov2Model(config), 22, 0.05).eval()


def save_clip_folder(model, folder: Path, tokenizer_dir: Path) -> Path:
    """The CLIP as its Hugging Face repo ships it: config.json, model.safetensors and the tokenizer."""
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    return folder
