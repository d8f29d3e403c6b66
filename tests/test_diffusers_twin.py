"""The diffusers integration (training/evaluation path) against the ComfyUI patch on the same weights."""

import pytest
import torch

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.elite_core.elite.diffusers_attention import install_elite
from elite_test_pack.tiny_models import build_tiny_sd15_model, tiny_sd15_unet_config
from elite_test_pack.tiny_training_models import tiny_diffusers_unet
from elite_test_pack.unet_calls import cfg_batch, unet_eps

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def twins():
    """A diffusers UNet and a ComfyUI UNet holding the same weights (ComfyUI's own key map)."""
    import comfy.utils

    unet = tiny_diffusers_unet()
    comfy_model = build_tiny_sd15_model(seed=99)
    key_map = comfy.utils.unet_to_diffusers(tiny_sd15_unet_config())
    source = unet.state_dict()
    converted = {ldm: source[diff] for diff, ldm in key_map.items() if diff in source}
    missing, unexpected = comfy_model.model.diffusion_model.load_state_dict(converted, strict=False)
    assert not unexpected and not missing
    return unet, comfy_model


@pytest.fixture(scope="module")
def twin_concept(tiny_clip, tiny_clip_vision, global_mapper, local_mapper, concept_image):
    concept = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper)
    positive, injection = comfy_elite.concept_conditioning(tiny_clip, concept, "a photo of S", "S", False)
    negative = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(""))[0][0]
    return concept, positive, negative, injection.index, local_mapper.kv


def diffusers_eps(unet, x, context):
    with torch.no_grad():
        return unet(x, torch.full((x.shape[0],), 500.0), encoder_hidden_states=context).sample


def test_plain_unets_agree(twins, twin_concept, record_parity):
    unet, comfy_model = twins
    _, positive, negative, _, _ = twin_concept
    x, context = cfg_batch(positive[0][0], negative, [1, 0], 1)
    ours, theirs = diffusers_eps(unet, x, context), unet_eps(comfy_model, x, context, [1, 0])
    record_parity(ours, theirs, "(diffusers vs ComfyUI ε, unpatched)")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cond_or_uncond", [[1, 0], [0, 1], [0]])
def test_elite_agrees_through_both_integrations(twins, twin_concept, cond_or_uncond, record_parity):
    unet, comfy_model = twins
    concept, positive, negative, index, local_kv = twin_concept
    x, context = cfg_batch(positive[0][0], negative, cond_or_uncond, 2)
    patched = elite_patch.apply_elite(comfy_model, concept, positive, 0.8)
    comfy_eps = unet_eps(patched, x, context, cond_or_uncond)

    twin = tiny_diffusers_unet()
    handle = install_elite(twin, concept.global_kv, local_kv)
    rows = torch.tensor([index if kind == 0 else -1 for kind in cond_or_uncond for _ in range(2)])
    with handle.inputs(concept.local_tokens(), rows, scale=0.8):
        twin_eps = diffusers_eps(twin, x, context)
    record_parity(twin_eps, comfy_eps, "(diffusers twin vs ComfyUI ε)")
    torch.testing.assert_close(twin_eps, comfy_eps, atol=1e-5, rtol=0)
    assert (twin_eps - diffusers_eps(twin, x, context)).abs().max() > 1e-4  # outside inputs(): global only


def test_self_attention_is_left_alone(twin_concept):
    concept, _, _, _, local_kv = twin_concept
    unet = tiny_diffusers_unet()
    before = {name: type(p) for name, p in unet.attn_processors.items() if ".attn1." in name}
    install_elite(unet, concept.global_kv, local_kv)
    after = unet.attn_processors
    assert {name: type(after[name]) for name in before} == before
    assert sum(type(p).__name__ == "ELITEAttnProcessor" for p in after.values()) == 16
