"""ELITEEncoder: CLIP vision features, preprocessing and words, against independent computations."""

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.common.images import CLIP_MEAN, CLIP_STD
from comfyui_elite.elite_core.elite.clip_input import select_elite_layers, squash_to_clip_input
from comfyui_elite.nodes.nodes_encoder import ELITEEncoder
from elite_test_pack.reference_encoder import hooked_block_outputs, reference_mlp


def test_squash_is_pil_bicubic_on_uint8_with_clip_normalisation(concept_image):
    """Re-states the reference transform: PIL resize((224,224), BICUBIC) -> ToTensor -> Normalize."""
    pixels = squash_to_clip_input(concept_image)
    frame = (concept_image[0].numpy() * 255).round().astype(np.uint8)
    resized = np.asarray(Image.fromarray(frame).resize((224, 224), resample=3), dtype=np.float64) / 255
    expected = (resized - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_squash_keeps_the_whole_image_without_cropping():
    # Three vertical stripes on a wide image; a centre crop would lose the red and blue stripes.
    image = torch.zeros(1, 90, 270, 3)
    image[:, :, :90, 0] = 1.0
    image[:, :, 90:180, 1] = 1.0
    image[:, :, 180:, 2] = 1.0
    pixels = squash_to_clip_input(image)
    red = (1 - CLIP_MEAN[0]) / CLIP_STD[0]
    blue = (1 - CLIP_MEAN[2]) / CLIP_STD[2]
    assert pixels[0, 0, 112, 10].item() == pytest.approx(red, abs=1e-5)
    assert pixels[0, 2, 112, 214].item() == pytest.approx(blue, abs=1e-5)


def test_squash_agrees_with_comfyui_torch_resize_up_to_filter_differences(concept_image):
    import comfy.clip_vision

    ours = squash_to_clip_input(concept_image)
    comfy_pixels = comfy.clip_vision.clip_preprocess(concept_image, size=224, crop=False)
    assert (ours - comfy_pixels).abs().mean() < 0.05


def test_alpha_channel_is_ignored(concept_image):
    rgba = torch.cat([concept_image, torch.zeros_like(concept_image[..., :1])], dim=-1)
    assert torch.equal(squash_to_clip_input(rgba), squash_to_clip_input(concept_image))


def test_layer_selection_takes_blocks_24_4_8_12_16():
    all_hidden = torch.arange(1, 25).float().view(1, 24, 1, 1).expand(1, 24, 257, 3)
    assert [int(t[0, 0, 0]) for t in select_elite_layers(all_hidden)] == [24, 4, 8, 12, 16]


def test_features_are_the_outputs_of_blocks_24_4_8_12_16(tiny_clip_vision, concept_image):
    features = comfy_elite.clip_vision_features(tiny_clip_vision, concept_image, mapper_width=64)
    blocks = hooked_block_outputs(tiny_clip_vision, squash_to_clip_input(concept_image))
    for feature, block in zip(features, (24, 4, 8, 12, 16)):
        assert feature.shape == (1, 257, 64)
        torch.testing.assert_close(feature, blocks[block].float(), atol=0, rtol=0)


def test_encoder_words_equal_the_mapper_formula(tiny_clip_vision, global_mapper, global_mapper_state, concept_image,
                                                record_parity):
    (concept,) = ELITEEncoder.execute(tiny_clip_vision, global_mapper, concept_image).result
    blocks = hooked_block_outputs(tiny_clip_vision, squash_to_clip_input(concept_image))
    assert concept.words.shape == (1, 5, 768) and concept.words.dtype == torch.float32
    for i, block in enumerate((24, 4, 8, 12, 16)):
        f = blocks[block].float()
        expected = reference_mlp(global_mapper_state, f"mapping_{i}", f[:, 0]) + torch.stack(
            [reference_mlp(global_mapper_state, f"mapping_patch_{i}", f[:, p]) for p in range(1, 257)]
        ).mean(0)
        record_parity(concept.words[:, i], expected, f"(word {i})")
        torch.testing.assert_close(concept.words[:, i], expected, atol=1e-5, rtol=0)
    wk = global_mapper_state["up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k.weight"]
    assert torch.equal(concept.global_kv["up_blocks_3_attentions_2_transformer_blocks_0_attn2"][0], wk)


def test_several_images_give_one_word_set_per_image(tiny_clip_vision, global_mapper, concept_image):
    batch = torch.cat([concept_image, concept_image.flip(2)])
    concept = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, batch)
    single = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image)
    assert concept.num_images == 2
    torch.testing.assert_close(concept.words[:1], single.words, atol=1e-5, rtol=0)
    torch.testing.assert_close(concept.prompt_words(all_words=False), concept.words.mean(0)[:1])


def test_clip_vision_in_comfyui_default_half_storage(tiny_clip_vision, global_mapper, local_mapper, concept_image):
    """A CLIP_VISION as ComfyUI loads it (fp16 weights, manual-cast layers) encodes like the fp32 one."""
    from elite_test_pack.tiny_models import build_tiny_clip_vision

    half = build_tiny_clip_vision(seed=3, stored_dtype=None)
    assert next(half.model.parameters()).dtype == torch.float16
    ours = comfy_elite.encode_concept(half, global_mapper, concept_image, local_mapper)
    full = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper)
    assert ours.words.dtype == ours.local.tokens.dtype == torch.float32
    for got, want in ((ours.words, full.words), (ours.local.tokens, full.local.tokens)):
        assert torch.isfinite(got).all()
        assert (got - want).abs().max() <= 0.02 * want.abs().max()


class _FakeVision:
    """A CLIP_VISION stand-in with a configurable geometry (e.g. ViT-H/14: 32 layers, 1280 wide)."""

    def __init__(self, layers, tokens, width):
        module = torch.nn.Module()
        module.vision_model = torch.nn.Module()
        module.vision_model.encoder = torch.nn.Module()
        module.vision_model.encoder.layers = torch.nn.ModuleList([torch.nn.Identity() for _ in range(layers)])
        module.vision_model.embeddings = torch.nn.Module()
        module.vision_model.embeddings.position_embedding = torch.nn.Embedding(tokens, width)
        self.model = module


@pytest.mark.parametrize(
    "geometry, message",
    [
        ((32, 257, 1280), "This CLIP vision model is ViT-H/14 (32 layers, 1280 wide; the one IP-Adapter uses); ELITE "
                          "needs CLIP ViT-L/14 (24 layers, 257 tokens at 224 px, 1024 wide)"),
        ((12, 197, 768), "is ViT-B/16 (12 layers, 768 wide"),
        ((20, 101, 512), "is of a size ELITE does not use (20 layers, 512 wide, 101 tokens)"),
        ((24, 257, 128), "is 128 wide, but the ELITE mapper expects 64-wide features"),
    ],
)
def test_wrong_clip_vision_is_refused(global_mapper, concept_image, geometry, message):
    with pytest.raises(comfy_elite.ELITEInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        comfy_elite.encode_concept(_FakeVision(*geometry), global_mapper, concept_image)


def test_non_clip_vision_model_is_refused(global_mapper, concept_image):
    class Dino:
        model = torch.nn.Linear(2, 2)

    with pytest.raises(comfy_elite.ELITEInputError, match="not a CLIP vision transformer"):
        comfy_elite.encode_concept(Dino(), global_mapper, concept_image)
