"""ELITE's training losses restated (docs/reference/elite.md §6 the injected text forward, §7 the
local cross-attention, docs/reference/elite.md §9.2 the two stages), written the way the reference computes them, for the training
tests to compare the trainer's stages against. ``models`` is the tuple of
tiny_training_models.build_training_models (unet, text, vision, vae, tokenizer).

Only the attn2 lookup (which modules are the 16 cross-attentions) and the site table come from the
pack; the maths is written out here.
"""

from __future__ import annotations

import copy

import torch

from .pack_import import elite_core_module


def reference_features(vision, pixels):
    hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    return [hidden[24], hidden[4], hidden[8], hidden[12], hidden[16]]


def reference_context(text, input_ids, index, words):
    """The reference's injected text forward (docs/reference/elite.md §6): e'[k+L:77] = e[k+1:77-L+1], e'[k:k+L] = words."""
    raw = text.get_input_embeddings()(input_ids)
    injected = raw.clone()
    length = words.shape[1]
    for b, k in enumerate(index.tolist()):
        injected[b, k + length:77] = raw[b, k + 1:k + 1 + (77 - k - length)]
        injected[b, k:k + length] = words[b]
    hook = text.get_input_embeddings().register_forward_hook(lambda m, i, o: injected)
    try:
        return text(input_ids=input_ids).last_hidden_state
    finally:
        hook.remove()


def reference_noisy(batch):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    t = batch["timesteps"]
    return (alphas_cumprod[t].sqrt().float().view(-1, 1, 1, 1) * batch["latents"]
            + (1 - alphas_cumprod[t]).sqrt().float().view(-1, 1, 1, 1) * batch["noise"])


def reference_global_loss(models, mapper, batch) -> torch.Tensor:
    """docs/reference/elite.md §9.2 global stage, restated: the five words from blocks 24, 4, 8, 12, 16 through the mapper; the
    reference's text forward (docs/reference/elite.md §6: e'[k+L:77] = e[k+1:77-L+1], e'[k:k+L] = words, then positions); a copy
    of the UNet whose attn2 to_k/to_v ARE the mapper's K/V, with diffusers' own attention; the loss."""
    from diffusers.models.attention_processor import AttnProcessor

    attn2_modules = elite_core_module("elite.objectives").attn2_modules
    unet, text, vision, _, _ = models
    features = reference_features(vision, batch["pixels_clip"])
    assert torch.equal(features[0], vision(pixel_values=batch["pixels_clip"]).last_hidden_state)
    words = mapper(features)
    context = reference_context(text, batch["input_ids"], batch["placeholder_index"], words)
    twin = copy.deepcopy(unet)
    twin.set_attn_processor(AttnProcessor())
    for prefix, attn in attn2_modules(twin).items():
        attn.to_k.weight = getattr(mapper, f"{prefix}_to_k").weight  # the same leaf: its gradient is the mapper's
        attn.to_v.weight = getattr(mapper, f"{prefix}_to_v").weight
    noisy, t = reference_noisy(batch), batch["timesteps"]
    eps = twin(noisy, t, encoder_hidden_states=context).sample
    per_sample = ((eps - batch["noise"]) ** 2).mean(dim=(1, 2, 3))
    return per_sample.mean() + 0.01 * words.abs().mean()


class ReferenceLocalAttention:
    """docs/reference/elite.md §7 as the reference's training step runs it: heads folded batch-major (row = b·H + h), P over
    the 77 text keys with the global K/V, the placeholder column of P divided by ONE maximum over the
    whole (B·H, N) tensor, P_local over the 256 local keys, O = P V + λ (P_local ⊙ A) V_local; every
    V_local (heads folded) is kept for the value regulariser."""

    def __init__(self, weights, local, index, kept):
        self.weights, self.local, self.index, self.kept = weights, local, index, kept

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
        heads = attn.heads

        def fold(x):
            b, n, c = x.shape
            return x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3).reshape(b * heads, n, c // heads)

        wk, wv, wk_local, wv_local = self.weights
        query = fold(attn.to_q(hidden_states))
        key, value = fold(encoder_hidden_states @ wk.T), fold(encoder_hidden_states @ wv.T)
        scale = query.shape[-1] ** -0.5
        probs = (torch.matmul(query, key.transpose(-1, -2)) * scale).softmax(dim=-1)
        hidden = torch.matmul(probs, value)
        key_local, value_local = fold(self.local @ wk_local.T), fold(self.local @ wv_local.T)
        self.kept.append(value_local)
        probs_local = (torch.matmul(query, key_local.transpose(-1, -2)) * scale).softmax(dim=-1)
        rows = torch.arange(probs.shape[0])
        gate = probs[rows, :, self.index.repeat_interleave(heads)]  # (B·H, N)
        gate = gate / gate.max()
        hidden = hidden + 1.0 * torch.matmul(probs_local * gate[..., None], value_local)
        b = hidden.shape[0] // heads
        hidden = hidden.reshape(b, heads, -1, hidden.shape[-1]).permute(0, 2, 1, 3).reshape(b, -1, heads * hidden.shape[-1])
        return attn.to_out[1](attn.to_out[0](hidden))


def reference_local_loss(models, local_mapper, global_mapper, batch, per_element=False) -> torch.Tensor:
    """docs/reference/elite.md §9.2 local stage restated: w0 of the frozen global mapper, E = local mapper(object) x
    nearest-16x16 object mask, both branches at λ = 1, masked loss with the reference's normalisation
    (sum over 4 channels / mask sum over 1 channel) and 1e-4 · mean over layers of mean |V_local|."""
    sd1_attn2_sites = elite_core_module("elite.sites").SD1_ATTN2_SITES
    unet, text, vision, _, _ = models
    word = global_mapper(reference_features(vision, batch["pixels_clip"]))[:, 0:1]
    local = local_mapper(reference_features(vision, batch["pixels_object"]))
    seg = torch.nn.functional.interpolate(batch["object_segmentation"], (16, 16), mode="nearest")
    local = local * seg[:, 0].reshape(seg.shape[0], -1, 1)
    context = reference_context(text, batch["input_ids"], batch["placeholder_index"], word)
    twin, kept = copy.deepcopy(unet), []
    processors = dict(twin.attn_processors)
    for site in sd1_attn2_sites:
        p = site.ckpt_prefix
        weights = [getattr(m, f"{p}_to_{w}").weight for m, w in
                   ((global_mapper, "k"), (global_mapper, "v"), (local_mapper, "k"), (local_mapper, "v"))]
        processors[f"{site.diffusers}.processor"] = ReferenceLocalAttention(weights, local, batch["placeholder_index"], kept)
    twin.set_attn_processor(processors)
    eps = twin(reference_noisy(batch), batch["timesteps"], encoder_hidden_states=context).sample
    mask = batch["mask"]
    loss = torch.nn.functional.mse_loss(eps, batch["noise"], reduction="none")
    if per_element:
        data = ((loss * mask).sum([1, 2, 3]) / (mask.sum([1, 2, 3]) * 4)).mean()
    else:
        data = ((loss * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
    assert len(kept) == 16
    regulariser = sum(torch.mean(torch.abs(v)) for v in kept) / len(kept) * 0.0001
    return data + regulariser
