"""ELITE's global training stage on tiny diffusers/transformers models in the SD1.x layouts: the loss
against the reference (elite-reference §6, §7, §9.2) restated here, frozen weights, learning."""

from __future__ import annotations

import copy

import pytest
import torch

from comfyui_elite.elite_core.elite_objectives import (
    GlobalStage,
    attn2_modules,
    new_global_mapper,
    posterior_sample,
)
from comfyui_elite.elite_core.mappers import MapperWidths
from comfyui_elite.elite_core.sites import SD1_ATTN2_SITES
from elite_test_pack.tiny_models import TINY_VISION_WIDTH, seeded_init_, tiny_clip_vision_config
from test_diffusers_twin import tiny_diffusers_unet

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a photo of S on the beach", "S"]  # placeholder at token 4 and at token 1


@pytest.fixture(scope="module")
def models():
    """UNet (SD1.5 block layout), CLIP text (768 wide, 2 layers), CLIP vision (ViT-L/14's 24 layers
    and 257 tokens, 64 wide), VAE: tiny, seeded, RANDOM weights; and ComfyUI's CLIP tokenizer."""
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


def token_batch(tokenizer, prompts):
    ids, index = [], []
    for prompt in prompts:
        row = [t[0] for t in tokenizer.tokenize_with_weights(prompt)["l"][0]]
        ids.append(row)
        index.append(row.index(tokenizer.tokenize_with_weights("S")["l"][0][1][0]))
    return torch.tensor(ids), torch.tensor(index)


def widths(unet) -> MapperWidths:
    kv = tuple(attn2_modules(unet)[site.ckpt_prefix].to_k.weight.shape[0] for site in SD1_ATTN2_SITES)
    return MapperWidths(input_dim=TINY_VISION_WIDTH, hidden_dim=64, output_dim=768, kv_dims=kv)


@pytest.fixture()
def batch(models):
    unet, text, vision, vae, tokenizer = models
    gen = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        latents = posterior_sample(vae, pixels, torch.randn(2, 4, 16, 16, generator=gen))
    ids, index = token_batch(tokenizer, PROMPTS)
    return dict(latents=latents, noise=torch.randn(2, 4, 16, 16, generator=gen), timesteps=torch.tensor([981, 37]),
                pixels_clip=torch.randn(2, 3, 224, 224, generator=gen), input_ids=ids, placeholder_index=index)


def reference_global_loss(models, mapper, batch) -> torch.Tensor:
    """§9.2 global stage, restated: the five words from blocks 24, 4, 8, 12, 16 through the mapper; the
    reference's text forward (§6: e'[k+L:77] = e[k+1:77-L+1], e'[k:k+L] = words, then positions); a copy
    of the UNet whose attn2 to_k/to_v ARE the mapper's K/V, with diffusers' own attention; the loss."""
    unet, text, vision, _, _ = models
    hidden = vision(pixel_values=batch["pixels_clip"], output_hidden_states=True).hidden_states
    features = [hidden[24], hidden[4], hidden[8], hidden[12], hidden[16]]
    assert torch.equal(hidden[24], vision(pixel_values=batch["pixels_clip"]).last_hidden_state)
    words = mapper(features)
    raw = text.get_input_embeddings()(batch["input_ids"])
    injected = raw.clone()
    length = words.shape[1]
    for b, k in enumerate(batch["placeholder_index"].tolist()):
        injected[b, k + length:77] = raw[b, k + 1:k + 1 + (77 - k - length)]
        injected[b, k:k + length] = words[b]
    hook = text.get_input_embeddings().register_forward_hook(lambda m, i, o: injected)
    try:
        context = text(input_ids=batch["input_ids"]).last_hidden_state
    finally:
        hook.remove()
    twin = copy.deepcopy(unet)
    twin.set_attn_processor(diffusers.models.attention_processor.AttnProcessor())
    for prefix, attn in attn2_modules(twin).items():
        attn.to_k.weight = getattr(mapper, f"{prefix}_to_k").weight  # the same leaf: its gradient is the mapper's
        attn.to_v.weight = getattr(mapper, f"{prefix}_to_v").weight
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    t = batch["timesteps"]
    noisy = (alphas_cumprod[t].sqrt().float().view(-1, 1, 1, 1) * batch["latents"]
             + (1 - alphas_cumprod[t]).sqrt().float().view(-1, 1, 1, 1) * batch["noise"])
    eps = twin(noisy, t, encoder_hidden_states=context).sample
    per_sample = ((eps - batch["noise"]) ** 2).mean(dim=(1, 2, 3))
    return per_sample.mean() + 0.01 * words.abs().mean()


def test_global_stage_loss_and_gradient_equal_the_reference(models, batch, record_parity):
    unet, text, vision, _, _ = models
    mapper = new_global_mapper(unet, widths(unet), seed=1)
    reference = copy.deepcopy(mapper)
    stage = GlobalStage(mapper, copy.deepcopy(unet), text, vision)
    loss, parts = stage(**batch)
    expected = reference_global_loss(models, reference, batch)
    record_parity(loss.detach(), expected.detach(), "(global-stage loss)")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    loss.backward()
    expected.backward()
    for (name, ours), theirs in zip(mapper.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert parts["regulariser"] > 0 and parts["mse"] > 0
    # a real check: the injected words change the context (the placeholder is not ignored)
    moved = dict(batch, placeholder_index=torch.tensor([1, 2]))
    assert abs(stage(**moved)[0].item() - loss.item()) > 1e-6


def test_global_stage_trains_only_the_mapper_and_reduces_the_loss(models, batch):
    unet, text, vision, _, _ = models
    unet = copy.deepcopy(unet)
    frozen = [{k: v.clone() for k, v in m.state_dict().items()} for m in (unet, text, vision)]
    mapper = new_global_mapper(unet, widths(unet), seed=1)
    stage = GlobalStage(mapper, unet, text, vision)
    optimizer = torch.optim.AdamW(stage.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss, _ = stage(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert {name for name, _ in stage.named_parameters()} == {f"mapper.{n}" for n, _ in mapper.named_parameters()}
    for old, module in zip(frozen, (unet, text, vision)):
        new = module.state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old)
    # the trained K/V left the UNet's own to_k/to_v where they were
    for prefix, attn in attn2_modules(unet).items():
        assert not torch.equal(getattr(mapper, f"{prefix}_to_k").weight, attn.to_k.weight)
