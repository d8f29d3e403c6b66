"""ELITE Prepare Concept: crop/pad/squash geometry on hand-computed cases, mask polarity, identity
when the object already fills a square photo, and a preview that shows exactly what the encoder sees."""

from __future__ import annotations

import pytest
import torch

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.common.images import CLIP_MEAN, CLIP_STD
from comfyui_elite.elite_core.elite import concept_prep
from comfyui_elite.nodes.nodes_prepare import ELITEPrepareConcept


def photo(height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (1, height, width, 3), generator=gen) / 255.0).float()


def box_mask(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[:, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return mask


def test_crop_with_margin_squash_and_pad_hand_computed():
    # object rows 20..59 (40 tall), columns 50..129 (80 wide) in a 100 x 200 photo; margin 0.25
    # -> 10 px above and below, 20 px left and right: rows 10..69, columns 30..149
    image, mask = photo(100, 200), box_mask(100, 200, (20, 60), (50, 130))
    out, out_mask = concept_prep.prepare_concept(image, mask, margin=0.25, fit="squash")
    assert out.shape == (1, 60, 120, 3) and out_mask.shape == (1, 60, 120)
    assert torch.equal(out, image[:, 10:70, 30:150])
    assert torch.equal(out_mask, mask[:, 10:70, 30:150])
    # pad: 120 x 120, 30 black rows above and below
    padded, padded_mask = concept_prep.prepare_concept(image, mask, margin=0.25, fit="pad")
    assert padded.shape == (1, 120, 120, 3)
    assert torch.equal(padded[:, 30:90], out) and padded[:, :30].abs().sum() == 0 and padded[:, 90:].abs().sum() == 0
    assert torch.equal(padded_mask[:, 30:90], out_mask) and padded_mask[:, :30].sum() == 0


def test_margin_stops_at_the_photo_edges_and_odd_padding_splits_floor_first():
    # object rows 0..29, columns 5..14 of a 40 x 40 photo; margin 0.5 -> 15 px up (clamped to 0) and
    # down (to row 45, clamped to 40), 5 px left (to 0) and right (to 20): rows 0..39, columns 0..19
    image, mask = photo(40, 40, 1), box_mask(40, 40, (0, 30), (5, 15))
    out, _ = concept_prep.prepare_concept(image, mask, margin=0.5, fit="squash")
    assert torch.equal(out, image[:, 0:40, 0:20])
    # 40 x 20 padded to 40 x 40: 10 columns left, 10 right
    padded, _ = concept_prep.prepare_concept(image, mask, margin=0.5, fit="pad")
    assert torch.equal(padded[:, :, 10:30], out)
    # 3 x 6 object, margin 0 -> 3 x 6 crop, padded to 6 x 6: 1 row above, 2 below
    image, mask = photo(10, 10, 2), box_mask(10, 10, (4, 7), (2, 8))
    padded, _ = concept_prep.prepare_concept(image, mask, margin=0.0, fit="pad")
    assert torch.equal(padded[:, 1:4, :], image[:, 4:7, 2:8]) and padded[:, 0].sum() == 0 and padded[:, 4:].sum() == 0


def test_identity_when_the_object_fills_a_square_photo():
    image = photo(64, 64, 3)
    for mask in (None, torch.ones(1, 64, 64)):
        for fit in concept_prep.FITS:
            out, out_mask = concept_prep.prepare_concept(image, mask, margin=0.1, fit=fit)
            assert torch.equal(out, image) and torch.equal(out_mask, torch.ones(1, 64, 64))


def test_mask_polarity():
    image, mask = photo(50, 60, 4), box_mask(50, 60, (10, 30), (20, 40))
    expected = concept_prep.prepare_concept(image, mask, 0.1, "squash", "white is the object")
    # Load Image's MASK is 1 on transparent pixels, i.e. the background: auto and explicit both flip it
    for polarity in ("auto", "white is the background"):
        got = concept_prep.prepare_concept(image, 1.0 - mask, 0.1, "squash", polarity)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert all(torch.equal(a, b) for a, b in zip(concept_prep.prepare_concept(image, mask, 0.1, "squash", "auto"),
                                                  expected))
    with pytest.raises(concept_prep.PrepareError, match="marks no object"):
        concept_prep.prepare_concept(image, torch.zeros(1, 50, 60), 0.1, "squash", "white is the object")
    with pytest.raises(concept_prep.PrepareError, match="Image From Batch"):
        concept_prep.prepare_concept(torch.cat([image, image]), None)


def test_the_preview_is_what_the_encoder_sees(monkeypatch, tiny_clip_vision, global_mapper, local_mapper):
    image, mask = photo(90, 130, 5), box_mask(90, 130, (20, 70), (30, 100))
    out, out_mask = concept_prep.prepare_concept(image, mask, 0.1, "pad")
    seen = {}
    real_layers, real_grid = comfy_elite._vision_layers, comfy_elite.mask_patch_grid

    def vision_layers(clip_vision, pixels, width):
        seen["pixels"] = pixels.clone()
        return real_layers(clip_vision, pixels, width)

    def grid(m):
        seen["grid"] = real_grid(m)
        return seen["grid"]

    monkeypatch.setattr(comfy_elite, "_vision_layers", vision_layers)
    monkeypatch.setattr(comfy_elite, "mask_patch_grid", grid)
    comfy_elite.encode_concept(tiny_clip_vision, global_mapper, out, local_mapper, out_mask, False)
    shown = concept_prep.preview(out, out_mask)
    assert shown.shape == (1, 224, 448, 3)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    clip_input = seen["pixels"][:1] * std + mean  # the encoder's global input, un-normalised
    torch.testing.assert_close(shown[..., :224, :].movedim(-1, 1), clip_input, rtol=0, atol=1e-6)
    # right half: the patches the local branch keeps are shown at full brightness, dropped ones dimmed
    kept = seen["grid"].view(16, 16)
    assert 0 < kept.sum() < 256
    right = shown[0, :, 224:].movedim(-1, 0)
    for r, c in [(8, 8), (0, 0), (15, 15)]:
        cell, source = right[:, r * 14 + 3:r * 14 + 11, c * 14 + 3:c * 14 + 11], clip_input[0, :, r * 14 + 3:r * 14 + 11,
                                                                                                c * 14 + 3:c * 14 + 11]
        factor = 1.0 if kept[r, c] else 0.25
        torch.testing.assert_close(cell, source * factor, rtol=0, atol=1e-6)


def test_the_node_outputs_and_refuses_with_its_name():
    image, mask = photo(60, 80, 6), box_mask(60, 80, (10, 50), (20, 60))
    result = ELITEPrepareConcept.execute(image, mask, 0.0, "squash", "auto")
    out, out_mask = result.result
    assert torch.equal(out, image[:, 10:50, 20:60]) and torch.equal(out_mask, mask[:, 10:50, 20:60])
    assert result.ui is not None
    with pytest.raises(ValueError, match="ELITE Prepare Concept: The mask marks no object"):
        ELITEPrepareConcept.execute(image, torch.zeros(1, 60, 80), 0.1, "squash", "white is the object")
