"""ELITELocalAttnPatch (global K/V part): exactly the 32 attn2 weights, and the input MODEL untouched."""

import copy

import pytest
import torch

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.elite_core.elite.concept import ELITEConcept
from comfyui_elite.elite_core.elite.sites import SD1_ATTN2_SITES
from comfyui_elite.nodes.nodes_attn_patch import ELITELocalAttnPatch
from elite_test_pack.tiny_models import build_tiny_sd15_model


@pytest.fixture(scope="module")
def concept(global_mapper):
    return ELITEConcept(words=torch.zeros(1, 5, 768), global_kv=global_mapper.kv)


def materialised_weights(model) -> dict[str, torch.Tensor]:
    model.patch_model()
    try:
        return {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    finally:
        model.unpatch_model()


def unet_eps(model, context):
    model.patch_model()
    try:
        x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return model.model.diffusion_model(x, timesteps=torch.tensor([500.0]), context=context)
    finally:
        model.unpatch_model()


def test_patch_sets_exactly_the_32_attn2_kv_weights(tiny_model, concept, global_mapper_state):
    before = materialised_weights(tiny_model)
    (patched,) = ELITELocalAttnPatch.execute(tiny_model, concept).result
    after = materialised_weights(patched)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {key for s in SD1_ATTN2_SITES for key in (s.comfy_to_k, s.comfy_to_v)}
    assert changed == expected and len(changed) == 32
    for site in SD1_ATTN2_SITES:
        assert torch.equal(after[site.comfy_to_k], global_mapper_state[site.ckpt_to_k])
        assert torch.equal(after[site.comfy_to_v], global_mapper_state[site.ckpt_to_v])


def test_input_model_is_never_mutated(tiny_model, concept):
    options_before = copy.deepcopy(tiny_model.model_options)
    patches_before = dict(tiny_model.patches)
    weights_before = materialised_weights(tiny_model)
    patched = elite_patch.apply_global_kv(tiny_model, concept)
    materialised_weights(patched)
    assert patched is not tiny_model
    assert tiny_model.patches == patches_before == {}
    assert tiny_model.model_options == options_before
    weights_after = materialised_weights(tiny_model)
    assert all(torch.equal(weights_before[k], weights_after[k]) for k in weights_before)


def test_patched_model_predicts_differently(tiny_model, concept):
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
    patched = elite_patch.apply_global_kv(tiny_model, concept)
    assert (unet_eps(patched, context) - unet_eps(tiny_model, context)).abs().max() > 1e-6


def test_model_with_other_cross_attention_width_is_refused(concept):
    sd2_like = build_tiny_sd15_model(seed=0, context_dim=1024)
    with pytest.raises(comfy_elite.ELITEInputError) as err:
        elite_patch.apply_global_kv(sd2_like, concept)
    message = str(err.value)
    assert "This MODEL (SD15) is not a Stable Diffusion 1.x UNet" in message
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight is (32, 1024)" in message
    assert "takes 768-wide CLIP-L text" in message


def test_model_without_the_sd1_blocks_is_refused(concept):
    no_attention = build_tiny_sd15_model(seed=0, transformer_depth=[0] * 8, transformer_depth_middle=0,
                                         transformer_depth_output=[0] * 12)
    with pytest.raises(comfy_elite.ELITEInputError, match=r"not a Stable Diffusion 1.x UNet that ELITE can patch: it has no "
                       r"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"):
        elite_patch.apply_global_kv(no_attention, concept)
