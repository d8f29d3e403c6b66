"""The 16-site table against the official checkpoint names and a real ComfyUI SD1.5 UNet."""

import pytest
import torch

from comfyui_elite.elite_core.elite.sites import SD1_ATTN2_SITES, SITES_BY_BLOCK

# ELITE's checkpoint layer names and widths, transcribed from the reference (Appendix A).
OFFICIAL_KV_LAYERS = {
    "down_blocks_0_attentions_0_transformer_blocks_0_attn2": 320,
    "down_blocks_0_attentions_1_transformer_blocks_0_attn2": 320,
    "down_blocks_1_attentions_0_transformer_blocks_0_attn2": 640,
    "down_blocks_1_attentions_1_transformer_blocks_0_attn2": 640,
    "down_blocks_2_attentions_0_transformer_blocks_0_attn2": 1280,
    "down_blocks_2_attentions_1_transformer_blocks_0_attn2": 1280,
    "up_blocks_1_attentions_0_transformer_blocks_0_attn2": 1280,
    "up_blocks_1_attentions_1_transformer_blocks_0_attn2": 1280,
    "up_blocks_1_attentions_2_transformer_blocks_0_attn2": 1280,
    "up_blocks_2_attentions_0_transformer_blocks_0_attn2": 640,
    "up_blocks_2_attentions_1_transformer_blocks_0_attn2": 640,
    "up_blocks_2_attentions_2_transformer_blocks_0_attn2": 640,
    "up_blocks_3_attentions_0_transformer_blocks_0_attn2": 320,
    "up_blocks_3_attentions_1_transformer_blocks_0_attn2": 320,
    "up_blocks_3_attentions_2_transformer_blocks_0_attn2": 320,
    "mid_block_attentions_0_transformer_blocks_0_attn2": 1280,
}


def test_sixteen_distinct_sites_match_the_checkpoint_names():
    assert len(SD1_ATTN2_SITES) == 16
    assert {s.ckpt_prefix: 320 * s.base_channels_mult for s in SD1_ATTN2_SITES} == OFFICIAL_KV_LAYERS
    assert len({s.comfy_prefix for s in SD1_ATTN2_SITES}) == 16
    assert len(SITES_BY_BLOCK) == 16
    assert SITES_BY_BLOCK[("middle", 0)].diffusers.startswith("mid_block.")


def test_comfy_keys_exist_with_the_expected_shapes(tiny_model):
    state = tiny_model.model_state_dict()
    channels = 32  # the tiny UNet's model_channels
    for site in SD1_ATTN2_SITES:
        for key in (site.comfy_to_k, site.comfy_to_v):
            assert tuple(state[key].shape) == (channels * site.base_channels_mult, 768), key
    attn2_keys = {k for k in state if ".attn2.to_k.weight" in k}
    assert attn2_keys == {s.comfy_to_k for s in SD1_ATTN2_SITES}


def test_block_ids_follow_comfyui_forward_order(tiny_model):
    """The table's order is ComfyUI's transformer_index order, and each block id is the one the
    sampler reports for that attention module."""
    seen = []
    model = tiny_model.clone()

    def record(n, context, value, extra_options):
        seen.append((extra_options["block"], extra_options["transformer_index"]))
        return n, context, value

    model.set_model_attn2_patch(record)
    x = torch.zeros(1, 4, 16, 16)
    context = torch.zeros(1, 77, 768)
    with torch.no_grad():
        model.model.diffusion_model(
            x, timesteps=torch.tensor([10.0]), context=context,
            transformer_options=model.model_options["transformer_options"],
        )
    assert [block for block, _ in seen] == [tuple(s.block) for s in SD1_ATTN2_SITES]
    assert [index for _, index in seen] == list(range(16))


@pytest.mark.parametrize("site", SD1_ATTN2_SITES, ids=lambda s: s.ckpt_prefix)
def test_diffusers_and_comfy_names_agree_with_comfyui_conversion(site):
    """ComfyUI's own diffusers->LDM key map sends each diffusers attn2 path to the table's prefix."""
    import comfy.utils

    from elite_test_pack.tiny_models import tiny_sd15_unet_config

    mapping = comfy.utils.unet_to_diffusers(tiny_sd15_unet_config())
    assert mapping[f"{site.diffusers}.to_k.weight"] == site.comfy_to_k[len("diffusion_model."):]
