"""ELITE's global training stage on tiny diffusers/transformers models in the SD1.x layouts: the loss
against the reference (docs/reference/elite.md §6, §7, §9.2, restated in elite_test_pack.reference_elite_training),
frozen weights, learning."""

from __future__ import annotations

import copy

import pytest
import torch

from comfyui_elite.elite_core.elite.objectives import (
    GlobalStage,
    LocalStage,
    attn2_modules,
    new_global_mapper,
    new_local_mapper,
)
from elite_test_pack.reference_elite_training import reference_global_loss, reference_local_loss
from elite_test_pack.tiny_training_models import tiny_mapper_widths

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")


def test_global_stage_loss_and_gradient_equal_the_reference(training_models, training_batch, record_parity):
    unet, text, vision, _, _ = training_models
    mapper = new_global_mapper(unet, tiny_mapper_widths(unet), seed=1)
    reference = copy.deepcopy(mapper)
    stage = GlobalStage(mapper, copy.deepcopy(unet), text, vision)
    loss, parts = stage(**training_batch)
    expected = reference_global_loss(training_models, reference, training_batch)
    record_parity(loss.detach(), expected.detach(), "(global-stage loss)")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    loss.backward()
    expected.backward()
    for (name, ours), theirs in zip(mapper.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert parts["regulariser"] > 0 and parts["mse"] > 0
    # a real check: the injected words change the context (the placeholder is not ignored)
    moved = dict(training_batch, placeholder_index=torch.tensor([1, 2]))
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


def test_global_stage_trains_only_the_mapper_and_reduces_the_loss(training_models, training_batch):
    unet, text, vision, _, _ = training_models
    unet = copy.deepcopy(unet)
    frozen = [{k: v.clone() for k, v in m.state_dict().items()} for m in (unet, text, vision)]
    mapper = new_global_mapper(unet, tiny_mapper_widths(unet), seed=1)
    stage = GlobalStage(mapper, unet, text, vision)
    losses = train_steps(stage, training_batch)
    assert losses[-1] < 0.8 * losses[0], losses
    assert {name for name, _ in stage.named_parameters()} == {f"mapper.{n}" for n, _ in mapper.named_parameters()}
    for old, module in zip(frozen, (unet, text, vision)):
        new = module.state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old)
    # the trained K/V left the UNet's own to_k/to_v where they were
    for prefix, attn in attn2_modules(unet).items():
        assert not torch.equal(getattr(mapper, f"{prefix}_to_k").weight, attn.to_k.weight)


@pytest.mark.parametrize("normalisation", ["reference", "per_element"])
def test_local_stage_loss_and_gradient_equal_the_reference(training_models, training_local_batch, normalisation,
                                                           record_parity, monkeypatch):
    unet, text, vision, _, _ = training_models
    global_mapper = new_global_mapper(unet, tiny_mapper_widths(unet), seed=1)
    with torch.no_grad():  # a "trained" global mapper: K/V away from the UNet's own
        for p in global_mapper.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.02)
    local_mapper = new_local_mapper(unet, tiny_mapper_widths(unet), seed=2)
    reference_mapper = copy.deepcopy(local_mapper)
    stage = LocalStage(local_mapper, global_mapper, copy.deepcopy(unet), text, vision, normalisation=normalisation)
    loss, parts = stage(**training_local_batch)
    expected = reference_local_loss(training_models, reference_mapper, global_mapper, training_local_batch,
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
    batch = training_local_batch
    unmasked = dict(batch, object_segmentation=torch.ones_like(batch["object_segmentation"]))
    assert abs(stage(**unmasked)[0].item() - loss.item()) > 1e-6
    assert abs(stage(**dict(batch, mask=torch.ones_like(batch["mask"])))[0].item() - loss.item()) > 1e-6
    import comfyui_elite.elite_core.elite.objectives as objectives
    from comfyui_elite.elite_core.elite.local_attention import local_term

    monkeypatch.setattr(objectives, "local_term", lambda *a, per_sample=False: local_term(*a, per_sample=True))
    assert abs(stage(**training_local_batch)[0].item() - loss.item()) > 1e-5  # measured: 2.9e-4


def test_local_stage_trains_only_the_local_mapper_and_reduces_the_loss(training_models, training_local_batch):
    unet, text, vision, _, _ = training_models
    unet = copy.deepcopy(unet)
    global_mapper = new_global_mapper(unet, tiny_mapper_widths(unet), seed=1)
    frozen = [{k: v.clone() for k, v in m.state_dict().items()} for m in (unet, text, vision, global_mapper)]
    stage = LocalStage(new_local_mapper(unet, tiny_mapper_widths(unet), seed=2), global_mapper, unet, text, vision)
    losses = train_steps(stage, training_local_batch)
    assert losses[-1] < 0.8 * losses[0], losses
    assert {name.split(".")[0] for name, _ in stage.named_parameters()} == {"local_mapper"}
    for old, module in zip(frozen, (unet, text, vision, global_mapper)):
        new = module.state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old)
