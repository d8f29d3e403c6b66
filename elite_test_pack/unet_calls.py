"""Direct UNet calls shared by the attention tests: one UNet call as the sampler makes it, the CFG
batch the sampler would build, and the placeholder index of each row."""

from __future__ import annotations

import copy

import torch


def unet_eps(patcher, x, context, cond_or_uncond, sigma=None):
    """One UNet call as the sampler makes it: weight patches applied, transformer_options carrying
    the patches plus cond_or_uncond (and sigmas when given)."""
    options = copy.copy(patcher.model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = list(cond_or_uncond)
    if sigma is not None:
        options["sigmas"] = torch.full((x.shape[0],), float(sigma))
    patcher.patch_model()
    try:
        with torch.no_grad():
            return patcher.model.diffusion_model(
                x.to(patcher.model.get_dtype()), timesteps=torch.full((x.shape[0],), 500.0),
                context=context.to(patcher.model.get_dtype()), transformer_options=options,
            ).float()
    finally:
        patcher.unpatch_model()


def cfg_batch(positive_context, negative_context, cond_or_uncond, batch, seed=0):
    """Latents and the context the sampler would build for these chunks (cond = 0, uncond = 1)."""
    chunks = [positive_context if kind == 0 else negative_context for kind in cond_or_uncond]
    context = torch.cat([c.expand(batch, -1, -1) for c in chunks])
    x = torch.randn(batch * len(cond_or_uncond), 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    return x, context


def row_indices(cond_or_uncond, batch, index):
    return [index if kind == 0 else None for kind in cond_or_uncond for _ in range(batch)]
