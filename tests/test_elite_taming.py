"""The Taming-Encoder options of ELITE training (elite_core.elite.taming), and gradient
checkpointing: each term against a re-statement written here, on tiny seeded RANDOM models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from comfyui_elite.elite_core.elite.objectives import GlobalStage, LocalStage, new_global_mapper, new_local_mapper
from comfyui_elite.elite_core.elite.taming import IdentityLoss
from elite_test_pack.reference_elite_training import reference_global_loss, reference_noisy
from elite_test_pack.tiny_training_models import tiny_mapper_widths, token_batch

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code


def reference_identity(models, batch, eps, max_timestep, weight):
    """x0^ = (z_t - sqrt(1 - a_t) eps^) / sqrt(a_t) in float64 schedule terms; the VAE decode; bicubic
    to 224 and CLIP's normalisation; 1 - cosine of the pooled CLIP embeddings, for t <= max only."""
    _, _, vision, vae, _ = models
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, 0)[batch["timesteps"]].view(-1, 1, 1, 1)
    x0 = ((reference_noisy(batch).double() - (1 - a).sqrt() * eps.double()) / a.sqrt()).float()
    image = vae.decode(x0 / 0.18215).sample
    image = F.interpolate((image + 1) / 2, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    ours = vision(pixel_values=(image - mean) / std).pooler_output
    theirs = vision(pixel_values=batch["pixels_clip"]).pooler_output
    keep = (batch["timesteps"] <= max_timestep).float()
    return weight * ((1 - F.cosine_similarity(ours, theirs, dim=-1)) * keep).mean()


def test_identity_loss_equals_its_restatement_and_leaves_noisy_samples_out(training_models, training_batch):
    unet, text, vision, vae, _ = training_models
    batch = dict(training_batch, timesteps=torch.tensor([300, 37]))
    mapper = new_global_mapper(unet, tiny_mapper_widths(unet), seed=1)
    plain = GlobalStage(copy.deepcopy(mapper), copy.deepcopy(unet), text, vision)
    stage = GlobalStage(mapper, copy.deepcopy(unet), text, vision, identity=IdentityLoss(vae, vision, 0.5, 400))
    loss, parts = stage(**batch)
    base, _ = plain(**batch)
    # the stage's eps for the restatement: the same UNet call, rerun
    with torch.no_grad():
        eps = stage._frozen[0](reference_noisy(batch), batch["timesteps"],
                               encoder_hidden_states=_context(stage, batch)).sample
    expected = reference_identity(training_models, batch, eps, 400, 0.5)
    torch.testing.assert_close(parts["identity"], expected.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss - base, expected, rtol=1e-4, atol=1e-6)
    assert parts["identity"] > 0
    # samples noisier than max_timestep are left out: both above it -> no identity term
    stage.identity.max_timestep = 10
    _, parts = stage(**batch)
    assert parts["identity"] == 0


def _context(stage, batch):
    from comfyui_elite.elite_core.elite.objectives import injected_words, vision_features

    unet, text, vision = stage._frozen
    words = stage.mapper(vision_features(vision, batch["pixels_clip"]))
    with injected_words(text, batch["placeholder_index"], words):
        return text(input_ids=batch["input_ids"])[0]


def test_identity_gradient_reaches_the_mapper(training_models, training_batch):
    unet, text, vision, vae, _ = training_models
    batch = dict(training_batch, timesteps=torch.tensor([100, 37]))
    mapper = new_global_mapper(unet, tiny_mapper_widths(unet), seed=1)
    stage = GlobalStage(mapper, copy.deepcopy(unet), text, vision, identity=IdentityLoss(vae, vision, 1.0, 400))
    identity = stage.identity(*_identity_inputs(stage, batch))
    identity.backward()
    grads = [p.grad for p in mapper.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def _identity_inputs(stage, batch):
    noisy = reference_noisy(batch)
    eps = stage._frozen[0](noisy, batch["timesteps"], encoder_hidden_states=_context(stage, batch)).sample
    return noisy, eps, batch["timesteps"], batch["pixels_clip"], stage.schedule


def test_plain_caption_batches_add_their_weighted_eps_mse_through_the_trained_kv(training_models, training_batch):
    """Regularised joint training: the plain batch's eps-MSE, with no words injected, through a UNet
    whose attn2 to_k/to_v are the mapper's K/V (the reference's global-stage restatement with an
    empty word set), times the weight."""
    unet, text, vision, vae, tokenizer = training_models
    mapper = new_global_mapper(unet, tiny_mapper_widths(unet), seed=1)
    gen = torch.Generator().manual_seed(9)
    ids, _ = token_batch(tokenizer, ["a dog on a beach S", "a red car S"])
    plain = dict(latents=torch.randn(2, 4, 16, 16, generator=gen), noise=torch.randn(2, 4, 16, 16, generator=gen),
                 timesteps=torch.tensor([500, 20]), input_ids=ids)
    stage = GlobalStage(mapper, copy.deepcopy(unet), text, vision, plain_weight=0.25)
    loss, parts = stage(**training_batch, plain=plain)
    base = reference_global_loss(training_models, copy.deepcopy(mapper), training_batch)
    # the restatement: no injection is an injection of zero words (the context is the plain text's)
    context = text(input_ids=ids).last_hidden_state
    twin = copy.deepcopy(unet)
    from diffusers.models.attention_processor import AttnProcessor

    from comfyui_elite.elite_core.elite.objectives import attn2_modules

    twin.set_attn_processor(AttnProcessor())
    for prefix, attn in attn2_modules(twin).items():
        attn.to_k.weight = getattr(mapper, f"{prefix}_to_k").weight
        attn.to_v.weight = getattr(mapper, f"{prefix}_to_v").weight
    noisy = reference_noisy(plain)
    plain_mse = ((twin(noisy, plain["timesteps"], encoder_hidden_states=context).sample - plain["noise"]) ** 2).mean()
    torch.testing.assert_close(parts["plain_mse"], plain_mse.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(loss, base + 0.25 * plain_mse, rtol=1e-5, atol=0)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(training_models, training_batch,
                                                                  training_local_batch):
    unet, text, vision, _, _ = training_models
    for kind in ("global", "local"):
        results = []
        for checkpointing in (False, True):
            twin = copy.deepcopy(unet)
            if checkpointing:
                twin.enable_gradient_checkpointing()
            if kind == "global":
                mapper = new_global_mapper(twin, tiny_mapper_widths(twin), seed=1)
                stage, data = GlobalStage(mapper, twin, text, vision), training_batch
            else:
                mapper = new_local_mapper(twin, tiny_mapper_widths(twin), seed=2)
                stage = LocalStage(mapper, new_global_mapper(twin, tiny_mapper_widths(twin), seed=1), twin, text, vision)
                data = training_local_batch
            loss, _ = stage(**data)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in mapper.parameters()]))
        (loss_a, grads_a), (loss_b, grads_b) = results
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
        assert any(g.abs().sum() > 0 for g in grads_a)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)
