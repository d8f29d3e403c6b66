"""ELITE Attention Map: the recorded map against an independent re-statement of the placeholder's
attention (softmax column of S per head, normalised by its maximum, averaged over heads, resized to
the latent and averaged over the 16 layers), its shape and range, nothing without S, a new sampling
run starting a new map, and recording changing nothing in the result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.elite_core.elite import attn2_patches
from comfyui_elite.elite_core.elite.attention_maps import AttentionRecorder, layer_grid
from comfyui_elite.nodes.nodes_attention_map import ELITEAttentionMap
from elite_test_pack.unet_calls import cfg_batch, unet_eps


def restated_map(calls, index, latent):
    """Per call: heads split, softmax over the text tokens of q.k / sqrt(d), the column of S, divided
    by its maximum over heads and positions, mean over heads; reshaped to the layer's grid, bilinear
    to the latent's size; the mean over calls."""
    maps = []
    for q, k, heads in calls:
        b, n, inner = q.shape
        qh = q.view(b, n, heads, -1).transpose(1, 2).double()
        kh = k.view(b, k.shape[1], heads, -1).transpose(1, 2).double()
        probs = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)[..., index]  # (b, h, n)
        probs = probs / probs.amax(dim=(1, 2), keepdim=True)
        rows = int(round((n * latent[0] / latent[1]) ** 0.5))
        grid = probs.mean(dim=1).view(b, 1, rows, n // rows).float()
        maps.append(F.interpolate(grid, size=latent, mode="bilinear", align_corners=False)[:, 0])
    return torch.stack(maps).mean(dim=0)


def test_the_map_is_the_placeholders_attention_averaged_over_layers(tiny_model, elite, monkeypatch):
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], 0.8, record_attention=True)
    calls = []
    real = attn2_patches.local_term

    def spy(q, k, selection, k_local, v_local, heads, scale, attention, per_sample=True, **kwargs):
        calls.append((q.detach().clone(), k.detach().clone(), heads))
        return real(q, k, selection, k_local, v_local, heads, scale, attention, per_sample, **kwargs)

    monkeypatch.setattr(attn2_patches, "local_term", spy)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 2)
    unet_eps(patched, x, context, [1, 0], sigma=5.0)
    assert len(calls) == 16
    recorded = elite_patch.attention_recorder(patched).mean()
    assert recorded.shape == (2, 16, 16)
    expected = restated_map(calls, elite["index"], (16, 16))
    torch.testing.assert_close(recorded, expected, rtol=1e-4, atol=1e-5)
    assert 0 <= recorded.min() and recorded.max() <= 1 and recorded.std() > 0


def test_recording_changes_nothing_and_costs_nothing_when_off(tiny_model, elite):
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    off = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], 0.8)
    on = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], 0.8, record_attention=True)
    assert elite_patch.attention_recorder(off) is None
    assert torch.equal(unet_eps(on, x, context, [1, 0], sigma=5.0), unet_eps(off, x, context, [1, 0], sigma=5.0))


def test_no_placeholder_gives_no_map_and_a_new_run_starts_a_new_map(tiny_model, elite):
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], 0.8, record_attention=True)
    recorder = elite_patch.attention_recorder(patched)
    x, context = cfg_batch(elite["neg"], elite["neg"], [1, 0], 1)  # a positive prompt without S
    unet_eps(patched, x, context, [1, 0], sigma=5.0)
    assert recorder.mean() is None
    (mask, shown) = ELITEAttentionMap.execute(patched, {"samples": torch.zeros(1, 4, 16, 16)}).result
    assert mask.shape == (1, 128, 128) and mask.abs().sum() == 0 and shown.shape == (1, 128, 128, 3)
    # with S: two steps of one run accumulate; a higher noise level again starts a new run
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    unet_eps(patched, x, context, [1, 0], sigma=5.0)
    first = recorder.mean().clone()
    unet_eps(patched, x * 0.5, context, [1, 0], sigma=2.0)
    assert recorder.count == 32
    unet_eps(patched, x, context, [1, 0], sigma=5.0)
    assert recorder.count == 16 and torch.equal(recorder.mean(), first)


def test_the_node_gives_a_mask_at_image_size_and_an_overlay(tiny_model, elite):
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], 0.8, record_attention=True)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    unet_eps(patched, x, context, [1, 0], sigma=5.0)
    images = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    result = ELITEAttentionMap.execute(patched, {"samples": torch.zeros(1, 4, 16, 16)}, images)
    mask, shown = result.result
    assert mask.shape == (1, 128, 128) and 0 <= mask.min() and mask.max() <= 1
    assert shown.shape == images.shape and result.ui is not None
    hot, cold = mask[0] > mask[0].quantile(0.9), mask[0] < mask[0].quantile(0.1)
    assert (shown[0][hot] - images[0][hot]).abs().mean() != (shown[0][cold] - images[0][cold]).abs().mean()
    with pytest.raises(ValueError, match="records no attention map"):
        ELITEAttentionMap.execute(tiny_model, {"samples": torch.zeros(1, 4, 16, 16)})


def test_layer_grids_follow_the_unet_levels():
    assert layer_grid(64 * 64, 64, 64) == (64, 64) and layer_grid(8 * 8, 64, 64) == (8, 8)
    assert layer_grid(13 * 9, 25, 17) == (13, 9)  # odd sizes round up at each level
    recorder = AttentionRecorder()
    assert recorder.mean() is None


def test_moving_the_placeholder_in_the_context_moves_nothing_spatially(tiny_model, elite):
    """The map follows the placeholder's token wherever it sits: with S's context vector swapped
    with another token's (attention has no notion of key order), the map is the same."""
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], 0.8, record_attention=True)
    recorder = elite_patch.attention_recorder(patched)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    unet_eps(patched, x, context, [1, 0], sigma=5.0)
    before = recorder.mean().clone()
    moved = context.clone()
    s, other = elite["index"], elite["index"] + 6
    moved[1, [s, other]] = context[1, [other, s]]  # row 1: the positive chunk of [uncond, cond]
    recorder.reset()
    unet_eps(patched, x, moved, [1, 0], sigma=5.0)
    torch.testing.assert_close(recorder.mean(), before, rtol=1e-5, atol=1e-6)
    # a control: changing another token's vector does change the map (the softmax sees every token)
    changed = context.clone()
    changed[1, other] = context[1, other] + torch.randn(context.shape[-1], generator=torch.Generator().manual_seed(2))
    recorder.reset()
    unet_eps(patched, x, changed, [1, 0], sigma=5.0)
    assert not torch.allclose(recorder.mean(), before, atol=1e-4)
