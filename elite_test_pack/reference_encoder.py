"""Independent computations of what ELITE's encoder does, for the encoder and mapper tests: the
mappers' MLP written out by hand (elite-reference's formulas) and CLIP vision's block outputs taken
with forward hooks. They share no code with the pack."""

from __future__ import annotations

import torch


def reference_mlp(state, prefix, x):
    """Linear -> LayerNorm -> LeakyReLU(0.01) -> Linear -> LayerNorm -> LeakyReLU -> Linear, by hand."""

    def linear(i, h):
        return h @ state[f"{prefix}.{i}.weight"].T + state[f"{prefix}.{i}.bias"]

    def layer_norm(i, h):
        mean = h.mean(-1, keepdim=True)
        var = ((h - mean) ** 2).mean(-1, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-5) * state[f"{prefix}.{i}.weight"] + state[f"{prefix}.{i}.bias"]

    def leaky(h):
        return torch.where(h > 0, h, 0.01 * h)

    h = leaky(layer_norm(1, linear(0, x)))
    h = leaky(layer_norm(4, linear(3, h)))
    return linear(6, h)


def hooked_block_outputs(clip_vision, pixels):
    """Outputs of each transformer block, captured with forward hooks (independent of 'all').

    ComfyUI's CLIP layers add into their input in place, so the hook keeps a copy."""
    outputs = {}
    layers = clip_vision.model.vision_model.encoder.layers
    handles = [
        layer.register_forward_hook(lambda m, i, o, b=b: outputs.__setitem__(b, o.clone()))
        for b, layer in enumerate(layers, start=1)
    ]
    try:
        with torch.no_grad():
            clip_vision.model(pixel_values=pixels)
    finally:
        for h in handles:
            h.remove()
    return outputs
