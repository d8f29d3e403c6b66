"""What the step benches share: ComfyUI as a library, a real-size SD1.5 UNet with random weights,
a random ELITE concept with the official mapper widths, CFG contexts, and one timed CFG step.

ComfyUI runs on CUDA when torch sees a GPU, else on the CPU; attention is PyTorch's
scaled_dot_product_attention on both (ComfyUI's own choice on the CPU would be sub-quadratic
attention, which samplers on a GPU never use).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def setup_comfy(threads: int | None = None) -> torch.device:
    """Import ComfyUI (``ELITE_COMFYUI_DIR``, else .cache/comfyui) and return the device it runs on."""
    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, os.environ.get("ELITE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui")))
    # the repository root, for elite_test_pack: after ComfyUI, whose nodes.py the
    # repository's nodes/ must not shadow
    sys.path.insert(1, str(REPO))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    args.use_pytorch_cross_attention = True
    import comfy.model_management

    return comfy.model_management.get_torch_device()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return f"CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_inputs(device: torch.device, seed: int = 0):
    """A real-size SD1.5 UNet on ``device``, a random concept with official mapper widths, and the
    CFG context (uncond, cond) on ``device``. Returns (ModelPatcher, concept, positive, context)."""
    import comfy.model_patcher
    import comfy.supported_models

    from elite_test_pack.pack_import import elite_core_module
    from elite_test_pack.tiny_models import seeded_init_, tiny_sd15_unet_config

    concept_mod, mappers, sites = (elite_core_module(m) for m in ("elite.concept", "elite.mappers", "elite.sites"))
    cpu = torch.device("cpu")
    sd15 = comfy.supported_models.SD15({**tiny_sd15_unet_config(), "model_channels": 320})
    sd15.set_inference_dtype(torch.float32, None)
    base = sd15.get_model({}, "", device=cpu)
    seeded_init_(base.diffusion_model, seed, std=0.02)
    base.to(device)
    model = comfy.model_patcher.ModelPatcher(base, device, device)

    gen = torch.Generator().manual_seed(seed + 1)

    def random_kv():
        return {s.ckpt_prefix: (torch.randn(c, 768, generator=gen) * 0.02, torch.randn(c, 768, generator=gen) * 0.02)
                for s, c in zip(sites.SD1_ATTN2_SITES, mappers.OFFICIAL_WIDTHS.kv_dims)}

    site_kv = mappers.SiteKV(random_kv())
    local = concept_mod.LocalBranch(tokens=torch.randn(1, 256, 768, generator=gen), kv=site_kv.weights,
                                    models=(comfy.model_patcher.ModelPatcher(site_kv, cpu, cpu),))
    concept = concept_mod.ELITEConcept(words=torch.randn(1, 5, 768, generator=gen), global_kv=random_kv(), local=local)
    positive_ctx, negative_ctx = torch.randn(2, 1, 77, 768, generator=gen)
    positive = [[positive_ctx, {elite_core_module("comfyui.elite_patch").PLACEHOLDER_KEY: positive_ctx[:, 5].clone()}]]
    return model, concept, positive, torch.cat([negative_ctx, positive_ctx]).to(device)


def configure(model, concept, positive, config: str):
    """A clone of ``model`` as ``config``: unpatched, global (K/V weights only), global+local (λ 0.8),
    global+local+map (recording the attention map)."""
    from elite_test_pack.pack_import import elite_core_module

    adapter = elite_core_module("comfyui.elite_patch")
    if config == "global":
        return adapter.apply_global_kv(model, concept)
    if config == "global+local":
        return adapter.apply_elite(model, concept, positive, 0.8)
    if config == "global+local+map":
        return adapter.apply_elite(model, concept, positive, 0.8, record_attention=True)
    return model


def one_step(model, context, size: int, options: dict | None = None) -> float:
    """Seconds for one CFG step (uncond + cond rows) of ``model``, its patches applied around it.
    ``options`` are extra transformer_options (e.g. a bench's own patches)."""
    device = context.device
    latent = torch.randn(2, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(7)).to(device)
    transformer_options = copy.copy(model.model_options.get("transformer_options", {}))
    transformer_options.update(cond_or_uncond=[1, 0], sigmas=torch.full((2,), 5.0, device=device), **(options or {}))
    model.patch_model()
    try:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            model.model.diffusion_model(latent, timesteps=torch.full((2,), 500.0, device=device), context=context,
                                        transformer_options=transformer_options)
        synchronize(device)
        return time.perf_counter() - start
    finally:
        model.unpatch_model()
