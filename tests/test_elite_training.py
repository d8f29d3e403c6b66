"""ELITE's global training stage on tiny diffusers/transformers models in the SD1.x layouts: the loss
against the reference (docs/reference/elite.md §6, §7, §9.2) restated here, frozen weights, learning."""

from __future__ import annotations

import copy

import pytest
import torch
from test_diffusers_twin import tiny_diffusers_unet

from comfyui_elite.elite_core.elite.mappers import MapperWidths
from comfyui_elite.elite_core.elite.objectives import (
    GlobalStage,
    LocalStage,
    attn2_modules,
    new_global_mapper,
    new_local_mapper,
    posterior_sample,
)
from comfyui_elite.elite_core.elite.sites import SD1_ATTN2_SITES
from elite_test_pack.tiny_models import TINY_VISION_WIDTH, seeded_init_, tiny_clip_vision_config

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a photo of S on the beach", "S"]  # placeholder at token 4 and at token 1


@pytest.fixture(scope="module")
def models():
    return build_training_models()


def build_training_models():
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
    unet, text, vision, _, _ = models
    features = reference_features(vision, batch["pixels_clip"])
    assert torch.equal(features[0], vision(pixel_values=batch["pixels_clip"]).last_hidden_state)
    words = mapper(features)
    context = reference_context(text, batch["input_ids"], batch["placeholder_index"], words)
    twin = copy.deepcopy(unet)
    twin.set_attn_processor(diffusers.models.attention_processor.AttnProcessor())
    for prefix, attn in attn2_modules(twin).items():
        attn.to_k.weight = getattr(mapper, f"{prefix}_to_k").weight  # the same leaf: its gradient is the mapper's
        attn.to_v.weight = getattr(mapper, f"{prefix}_to_v").weight
    noisy, t = reference_noisy(batch), batch["timesteps"]
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


def train_steps(stage, batch, steps: int = 30) -> list[float]:
    """AdamW (lr 1e-3) with the reference's gradient clipping at 1.0, on one fixed batch."""
    optimizer = torch.optim.AdamW(stage.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss, _ = stage(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_global_stage_trains_only_the_mapper_and_reduces_the_loss(models, batch):
    unet, text, vision, _, _ = models
    unet = copy.deepcopy(unet)
    frozen = [{k: v.clone() for k, v in m.state_dict().items()} for m in (unet, text, vision)]
    mapper = new_global_mapper(unet, widths(unet), seed=1)
    stage = GlobalStage(mapper, unet, text, vision)
    losses = train_steps(stage, batch)
    assert losses[-1] < 0.8 * losses[0], losses
    assert {name for name, _ in stage.named_parameters()} == {f"mapper.{n}" for n, _ in mapper.named_parameters()}
    for old, module in zip(frozen, (unet, text, vision)):
        new = module.state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old)
    # the trained K/V left the UNet's own to_k/to_v where they were
    for prefix, attn in attn2_modules(unet).items():
        assert not torch.equal(getattr(mapper, f"{prefix}_to_k").weight, attn.to_k.weight)


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
    unet, text, vision, _, _ = models
    word = global_mapper(reference_features(vision, batch["pixels_clip"]))[:, 0:1]
    local = local_mapper(reference_features(vision, batch["pixels_object"]))
    seg = torch.nn.functional.interpolate(batch["object_segmentation"], (16, 16), mode="nearest")
    local = local * seg[:, 0].reshape(seg.shape[0], -1, 1)
    context = reference_context(text, batch["input_ids"], batch["placeholder_index"], word)
    twin, kept = copy.deepcopy(unet), []
    processors = dict(twin.attn_processors)
    for site in SD1_ATTN2_SITES:
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


@pytest.fixture()
def local_batch(batch):
    gen = torch.Generator().manual_seed(8)
    segmentation = torch.zeros(2, 3, 224, 224)
    segmentation[0, :, 40:180, 60:200] = 1.0
    segmentation[1, :, 100:224, 0:120] = 1.0
    mask = torch.zeros(2, 1, 16, 16)
    mask[0] = 1.0
    mask[1, :, 2:14, 3:12] = 1.0  # a small pasted object: the valid region only
    return dict(batch, pixels_object=torch.randn(2, 3, 224, 224, generator=gen) * segmentation,
                object_segmentation=segmentation, mask=mask)


@pytest.mark.parametrize("normalisation", ["reference", "per_element"])
def test_local_stage_loss_and_gradient_equal_the_reference(models, local_batch, normalisation, record_parity,
                                                           monkeypatch):
    unet, text, vision, _, _ = models
    global_mapper = new_global_mapper(unet, widths(unet), seed=1)
    with torch.no_grad():  # a "trained" global mapper: K/V away from the UNet's own
        for p in global_mapper.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.02)
    local_mapper = new_local_mapper(unet, widths(unet), seed=2)
    reference_mapper = copy.deepcopy(local_mapper)
    stage = LocalStage(local_mapper, global_mapper, copy.deepcopy(unet), text, vision, normalisation=normalisation)
    loss, parts = stage(**local_batch)
    expected = reference_local_loss(models, reference_mapper, global_mapper, local_batch,
                                    per_element=normalisation == "per_element")
    record_parity(loss.detach(), expected.detach(), f"(local-stage loss, {normalisation})")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    loss.backward()
    expected.backward()
    for (name, ours), theirs in zip(local_mapper.named_parameters(), reference_mapper.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-8, msg=name)
    assert all(p.grad is None for p in global_mapper.parameters())
    assert parts["regulariser"] > 0
    # real checks: the object mask, the valid-region mask and the gate's batch-wide max all matter
    unmasked = dict(local_batch, object_segmentation=torch.ones_like(local_batch["object_segmentation"]))
    assert abs(stage(**unmasked)[0].item() - loss.item()) > 1e-6
    assert abs(stage(**dict(local_batch, mask=torch.ones_like(local_batch["mask"])))[0].item() - loss.item()) > 1e-6
    import comfyui_elite.elite_core.elite.objectives as objectives
    from comfyui_elite.elite_core.elite.local_attention import local_term

    monkeypatch.setattr(objectives, "local_term", lambda *a, per_sample=False: local_term(*a, per_sample=True))
    assert abs(stage(**local_batch)[0].item() - loss.item()) > 1e-5  # measured: 2.9e-4


def test_local_stage_trains_only_the_local_mapper_and_reduces_the_loss(models, local_batch):
    unet, text, vision, _, _ = models
    unet = copy.deepcopy(unet)
    global_mapper = new_global_mapper(unet, widths(unet), seed=1)
    frozen = [{k: v.clone() for k, v in m.state_dict().items()} for m in (unet, text, vision, global_mapper)]
    stage = LocalStage(new_local_mapper(unet, widths(unet), seed=2), global_mapper, unet, text, vision)
    losses = train_steps(stage, local_batch)
    assert losses[-1] < 0.8 * losses[0], losses
    assert {name.split(".")[0] for name, _ in stage.named_parameters()} == {"local_mapper"}
    for old, module in zip(frozen, (unet, text, vision, global_mapper)):
        new = module.state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old)
