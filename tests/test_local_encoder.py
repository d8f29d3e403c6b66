"""ELITEEncoder's local tokens and the object mask, against an independent re-statement."""

import math

import pytest
import torch

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.elite.clip_input import (
    mask_patch_grid,
    object_image,
    prepare_object_mask,
    squash_to_clip_input,
)
from comfyui_elite.nodes.nodes_encoder import ELITEEncoder
from elite_test_pack.reference_encoder import hooked_block_outputs, reference_mlp


def reference_patch_mask(mask_hw: torch.Tensor) -> torch.Tensor:
    """Nearest 16x16 by explicit index arithmetic: source row floor(k * H / 16)."""
    h, w = mask_hw.shape
    rows = [math.floor(k * h / 16) for k in range(16)]
    cols = [math.floor(k * w / 16) for k in range(16)]
    return mask_hw[rows][:, cols].reshape(256, 1)


def reference_local_tokens(clip_vision, state, image, mask_hw):
    obj = image * mask_hw[None, :, :, None]
    blocks = hooked_block_outputs(clip_vision, squash_to_clip_input(obj))
    per_layer = []
    for i, block in enumerate((24, 4, 8, 12, 16)):
        f = blocks[block].float()
        per_layer.append(reference_mlp(state, f"mapping_{i}", f[:, :1]) + reference_mlp(state, f"mapping_patch_{i}", f[:, 1:]))
    return torch.stack(per_layer).mean(0) * reference_patch_mask(mask_hw)


@pytest.fixture(scope="module")
def object_mask():
    mask = torch.zeros(1, 96, 128)
    mask[:, 20:70, 30:110] = 1.0
    return mask


def test_local_tokens_match_reference(tiny_clip_vision, global_mapper, local_mapper, local_mapper_state,
                                      concept_image, object_mask, record_parity):
    (concept,) = ELITEEncoder.execute(tiny_clip_vision, global_mapper, concept_image, local_mapper,
                                      object_mask, False).result
    expected = reference_local_tokens(tiny_clip_vision, local_mapper_state, concept_image, object_mask[0])
    assert concept.local.tokens.shape == (1, 256, 768)
    record_parity(concept.local.tokens, expected, "(local tokens)")
    torch.testing.assert_close(concept.local.tokens, expected, atol=1e-5, rtol=0)
    background = reference_patch_mask(object_mask[0])[:, 0] == 0
    assert background.any() and torch.count_nonzero(concept.local.tokens[0, background]) == 0


def test_inverted_mask_is_the_complement(tiny_clip_vision, global_mapper, local_mapper, concept_image, object_mask):
    direct = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, object_mask)
    inverted = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper,
                                            1.0 - object_mask, invert_mask=True)
    assert torch.equal(direct.local.tokens, inverted.local.tokens)
    assert torch.equal(direct.words, inverted.words)  # the global mapping never sees the mask


def test_no_mask_means_the_whole_image(tiny_clip_vision, global_mapper, local_mapper, local_mapper_state, concept_image):
    concept = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper)
    expected = reference_local_tokens(tiny_clip_vision, local_mapper_state, concept_image, torch.ones(96, 128))
    torch.testing.assert_close(concept.local.tokens, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("height, width", [(16, 16), (37, 211), (224, 224), (1000, 17), (2048, 640)])
def test_patch_grid_is_nearest_floor_indexing(height, width):
    mask = (torch.rand(1, height, width, generator=torch.Generator().manual_seed(height)) > 0.5).float()
    torch.testing.assert_close(mask_patch_grid(mask)[0], reference_patch_mask(mask[0]), atol=0, rtol=0)


def test_soft_masks_are_thresholded_and_resized():
    image = torch.zeros(1, 40, 60, 3)
    soft = torch.linspace(0, 1, 60).expand(1, 20, 60)  # half the size of the image
    binary = prepare_object_mask(soft, image, invert=False)
    assert binary.shape == (1, 40, 60)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert binary[0, :, :29].sum() == 0 and binary[0, :, 31:].min() == 1


def test_one_mask_serves_a_batch_and_mismatched_batches_are_refused(tiny_clip_vision, global_mapper, local_mapper,
                                                                   concept_image, object_mask):
    batch = torch.cat([concept_image, concept_image])
    concept = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, batch, local_mapper, object_mask)
    assert concept.local.tokens.shape == (2, 256, 768)
    assert concept.local_tokens().shape == (1, 512, 768)  # several images: tokens side by side
    with pytest.raises(comfy_elite.ELITEInputError, match=r"MASK batch \(3\) must be 1 or match the IMAGE batch \(2\)"):
        comfy_elite.encode_concept(tiny_clip_vision, global_mapper, batch, local_mapper, object_mask.expand(3, -1, -1))


@pytest.mark.parametrize("mask_value, invert, hint", [
    (1.0, False, "turn on invert_mask"),
    (0.0, False, "turn on invert_mask"),
    (0.0, True, "use a cut-out PNG"),  # Load Image's MASK of an opaque image, inverted
    (1.0, True, "turn it off if your mask is already 1 on the object"),
])
def test_a_full_or_empty_mask_gets_a_polarity_hint(tiny_clip_vision, global_mapper, local_mapper, concept_image,
                                                   caplog, mask_value, invert, hint):
    mask = torch.full((1, 96, 128), mask_value)
    comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, mask, invert_mask=invert)
    assert hint in caplog.text


def test_a_plausible_mask_gets_no_hint(tiny_clip_vision, global_mapper, local_mapper, concept_image, object_mask, caplog):
    comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, object_mask)
    assert "object mask covers" not in caplog.text


def test_mask_without_local_mapper_is_reported(tiny_clip_vision, global_mapper, concept_image, object_mask, caplog):
    concept = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, None, object_mask)
    assert concept.local is None
    assert "connect a local mapper" in caplog.text


def test_whole_and_object_image_share_one_clip_forward_with_the_same_numbers(
        tiny_clip_vision, global_mapper, local_mapper, concept_image, object_mask, monkeypatch):
    """Global + local runs CLIP vision once (whole image and object image as one batch), and gives
    exactly the words and tokens of two separate forwards."""
    alone = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image)
    binary = prepare_object_mask(object_mask, concept_image, invert=False)
    object_features = comfy_elite.clip_vision_features(tiny_clip_vision, object_image(concept_image, binary), 64)
    with torch.no_grad():
        separate_tokens = local_mapper.module(object_features) * mask_patch_grid(binary)

    batches = []
    forward = tiny_clip_vision.model.forward
    monkeypatch.setattr(tiny_clip_vision.model, "forward",
                        lambda *a, **kw: batches.append(kw["pixel_values"].shape[0]) or forward(*a, **kw))
    both = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, object_mask)
    assert batches == [2]
    assert torch.equal(both.words, alone.words)
    assert torch.equal(both.local.tokens, separate_tokens)
