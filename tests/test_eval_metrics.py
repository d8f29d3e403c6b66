"""DreamBench metrics: cosine and aggregation against hand-computed values, the masked CLIP-I views, and the
encoders on tiny seeded models in the real Hugging Face layouts (CLIP with ComfyUI's real CLIP tokenizer,
DINO ViT, DINOv2), loaded back from a folder and from the single model.safetensors, with their preprocessing
checked against independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import COMFY_DIR
from PIL import Image
from safetensors.torch import load_file, save_file

from comfyui_elite.elite_core.common.images import images_to_pil as comfy_images_to_pil
from comfyui_elite.elite_core.evaluation.encoders import ClipEncoder, EvalModelError, load_encoder, preprocess_for
from comfyui_elite.elite_core.evaluation.metrics import (
    aggregate,
    cosine_matrix,
    crop_to_mask_box,
    fill_background,
    image_similarity,
    masked_view,
    text_similarity,
)
from elite_test_pack.tiny_metric_models import tiny_clip as _tiny_clip
from elite_test_pack.tiny_metric_models import tiny_dino as _tiny_dino
from elite_test_pack.tiny_metric_models import tiny_dinov2 as _tiny_dinov2

pytestmark = pytest.mark.comfyui_independent  # the metric code never imports ComfyUI's code

TOKENIZER_DIR = COMFY_DIR / "comfy" / "sd1_tokenizer"
needs_tokenizer = pytest.mark.skipif(not (TOKENIZER_DIR / "vocab.json").is_file(),
                                     reason=f"ComfyUI's CLIP tokenizer not found at {TOKENIZER_DIR}")


# --------------------------------------------------------------------------- maths, by hand


def test_cosine_matrix_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 4.0], [-1.0, 0.0]])  # unit vectors (0.6, 0.8) and (-1, 0)
    expected = torch.tensor([[0.6, -1.0], [0.8, 0.0]])
    assert torch.allclose(cosine_matrix(a, b), expected, atol=1e-7)
    assert cosine_matrix(a.double(), b).dtype == torch.float64
    assert cosine_matrix(a.half(), b.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="same width"):
        cosine_matrix(a, torch.ones(2, 3))


def test_image_and_text_similarity_by_hand():
    assert image_similarity(torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
                            torch.tensor([[3.0, 4.0], [-1.0, 0.0]])) == pytest.approx((0.6 - 1.0 + 0.8 + 0.0) / 4)
    generated = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    assert text_similarity(torch.tensor([1.0, 1.0]), generated) == pytest.approx((2 / math.sqrt(2) + 1) / 3)
    # raw cosines: an opposite image counts -1, not CLIPScore's max(cos, 0) = 0
    assert text_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[-3.0, 0.0]])) == pytest.approx(-1.0)


def test_aggregation_weighs_subjects_equally_and_spreads_over_seeds():
    scores = {
        (0, "dog", "p1"): 0.9,
        (0, "teapot", "p1"): 0.3, (0, "teapot", "p2"): 0.4, (0, "teapot", "p3"): 0.5,
        (1, "dog", "p1"): 0.7,
        (1, "teapot", "p1"): 0.2, (1, "teapot", "p2"): 0.2, (1, "teapot", "p3"): 0.2,
    }
    summary = aggregate(scores)
    # seed 0: dog 0.9, teapot 0.4 -> 0.65 (a flat mean over the 4 prompts would be 0.525); seed 1: 0.7, 0.2 -> 0.45
    assert summary.per_seed == pytest.approx({0: 0.65, 1: 0.45})
    assert summary.mean == pytest.approx(0.55)
    assert summary.std == pytest.approx(math.sqrt(0.1 ** 2 + 0.1 ** 2))  # sample std, ddof = 1
    assert summary.num_seeds == 2
    assert summary.per_subject == pytest.approx({"dog": 0.8, "teapot": 0.3})
    flat = sum(v for (seed, _, _), v in scores.items() if seed == 0) / 4
    assert flat == pytest.approx(0.525) and summary.per_seed[0] != pytest.approx(flat)

    single = aggregate({(7, "dog", "p1"): 0.5, (7, "cat", "p1"): 0.25})
    assert (single.mean, single.std, single.num_seeds) == (pytest.approx(0.375), 0.0, 1)
    with pytest.raises(ValueError, match="every seed must score the same subjects"):
        aggregate({(0, "dog", "p"): 0.5, (1, "cat", "p"): 0.5})
    with pytest.raises(ValueError, match="No scores"):
        aggregate({})


# --------------------------------------------------------------------------- masked views, by hand


def _coded_image(height: int, width: int) -> torch.Tensor:
    """Pixel (y, x) holds (y/10, x/10, 0.5), so a crop's origin can be read off its first pixel."""
    ys, xs = torch.meshgrid(torch.arange(height) / 10, torch.arange(width) / 10, indexing="ij")
    return torch.stack([ys, xs, torch.full_like(ys, 0.5)], dim=-1)


def test_fill_background_by_hand():
    image = torch.tensor([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], [[0.7, 0.8, 0.9], [0.0, 0.1, 0.2]]])
    mask = torch.tensor([[1.0, 0.0], [0.3, 0.9]])  # object = 1; 0.3 counts as background (threshold 0.5)
    white = fill_background(image, mask)
    expected = torch.tensor([[[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0], [0.0, 0.1, 0.2]]])
    assert torch.equal(white, expected)
    black = fill_background(image, mask, fill=0.0)
    assert torch.equal(black[0, 1], torch.zeros(3)) and torch.equal(black[1, 1], image[1, 1])
    grey = fill_background(image, mask, fill=(0.5, 0.25, 0.0))
    assert torch.equal(grey[1, 0], torch.tensor([0.5, 0.25, 0.0]))


def test_crop_to_mask_box_by_hand():
    image = _coded_image(6, 8)
    mask = torch.zeros(6, 8)
    mask[2:4, 3:6] = 1  # rows 2-3, columns 3-5: a 3 x 2 box
    crop = crop_to_mask_box(image, mask)
    assert crop.shape == (2, 3, 3) and torch.equal(crop[0, 0], image[2, 3]) and torch.equal(crop[-1, -1], image[3, 5])
    # margin 1/3: round(3/3) = 1 column and round(2/3) = 1 row on each side
    wide = crop_to_mask_box(image, mask, margin=1 / 3)
    assert wide.shape == (4, 5, 3) and torch.equal(wide[0, 0], image[1, 2])

    corner = torch.zeros(6, 8)
    corner[0:2, 6:8] = 1  # top-right corner, 2 x 2; margin 0.5 adds 1 pixel, clamped at the top and right
    clamped = crop_to_mask_box(image, corner, margin=0.5)
    assert clamped.shape == (3, 3, 3) and torch.equal(clamped[0, 0], image[0, 5])
    assert crop_to_mask_box(image, corner, margin=10).shape == image.shape  # clamped to the whole image

    view = masked_view(image, mask, crop=True)
    assert view.shape == (2, 3, 3) and torch.equal(view, image[2:4, 3:6])
    sparse = mask.clone()
    sparse[2, 4] = 0  # a hole in the object stays filled inside the box
    assert torch.equal(masked_view(image, sparse, crop=True)[0, 1], torch.ones(3))


def test_empty_or_wrong_masks_are_refused():
    image = _coded_image(4, 4)
    for fn in (fill_background, crop_to_mask_box):
        with pytest.raises(ValueError, match=r"object mask is empty.*marked with 1"):
            fn(image, torch.full((4, 4), 0.4))
    with pytest.raises(ValueError, match="must be \\(height, width\\) of its image"):
        fill_background(image, torch.ones(3, 4))
    with pytest.raises(ValueError, match="margin must be 0 or more"):
        crop_to_mask_box(image, torch.ones(4, 4), margin=-0.1)


# --------------------------------------------------------------------------- tiny models in the real layouts


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{kind: (in-memory model, folder)}: each saved with save_pretrained as the Hugging Face repos ship it."""
    models = {}
    for kind, build in (("clip", _tiny_clip), ("dino", _tiny_dino), ("dinov2", _tiny_dinov2)):
        model = build()
        folder = tmp_path_factory.mktemp(kind)
        model.save_pretrained(folder, safe_serialization=True)
        if kind == "clip":
            for name in ("vocab.json", "merges.txt"):
                (folder / name).write_bytes((TOKENIZER_DIR / name).read_bytes())
        models[kind] = (model, folder)
    return models


def _photo(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _reference_embedding(kind: str, model, image: Image.Image) -> torch.Tensor:
    pixels = preprocess_for(kind, 224)(image).unsqueeze(0)
    with torch.no_grad():
        if kind == "clip":
            out = model.get_image_features(pixel_values=pixels)
            features = getattr(out, "pooler_output", out)
        else:
            features = model(pixel_values=pixels).last_hidden_state[:, 0]
    return torch.nn.functional.normalize(features, dim=-1)


@needs_tokenizer
@pytest.mark.parametrize("kind", ["clip", "dino", "dinov2"])
@pytest.mark.parametrize("source", ["folder", "file"])
def test_loaded_encoders_match_the_in_memory_models(tiny_models, kind, source):
    model, folder = tiny_models[kind]
    path = folder if source == "folder" else folder / "model.safetensors"  # file: config inferred from shapes
    encoder = load_encoder(str(path), kind=kind if source == "file" else None, tokenizer_dir=str(TOKENIZER_DIR))
    assert encoder.kind == kind
    images = [_photo(seed=1), _photo(180, 240, seed=2), _photo(seed=3)]
    got = encoder.encode_images(images)
    expected = torch.cat([_reference_embedding(kind, model, img) for img in images])
    assert got.dtype == torch.float32 and torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (got[0] - got[1]).abs().max() > 1e-3  # the tiny models do tell images apart
    assert image_similarity(got[:1], got[:1].clone()) == pytest.approx(1.0, abs=1e-6)
    if kind == "clip":
        from transformers import CLIPTokenizer

        assert isinstance(encoder, ClipEncoder) and encoder.name == "CLIP ViT-128-wide/32"
        prompts = ["a photo of a dog", "a red teapot on a purple rug in the forest"]
        tokens = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))(prompts, padding="max_length", max_length=77,
                                                                   return_tensors="pt")
        with torch.no_grad():
            out = model.get_text_features(input_ids=tokens["input_ids"])
        expected_text = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)
        assert torch.allclose(encoder.encode_texts(prompts), expected_text, atol=1e-5)


def test_clip_preprocessing_matches_transformers_image_processor():
    from transformers import CLIPImageProcessorPil

    for size in (224, 336):
        image = _photo(300, 200, seed=4)  # landscape: shorter side resized, then centre-cropped
        ours = preprocess_for("clip", size)(image)
        theirs = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})(
            images=image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, size, size)
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.parametrize("kind", ["dino", "dinov2"])
def test_dino_preprocessing_matches_a_plain_pil_restatement(kind):
    image = _photo(200, 310, seed=5)  # portrait: width -> 256, height -> int(256 * 310 / 200) = 396
    resized = image.resize((256, 396), Image.BICUBIC)
    top = int(round((396 - 224) / 2.0))
    left = int(round((256 - 224) / 2.0))
    pixels = np.asarray(resized, dtype=np.float32)[top:top + 224, left:left + 224] / 255.0
    expected = (pixels - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    ours = preprocess_for(kind)(image)
    assert torch.allclose(ours, torch.from_numpy(expected.transpose(2, 0, 1)).float(), atol=1e-5)


@needs_tokenizer
@pytest.mark.parametrize("crop", [False, True])
def test_masked_clip_i_ignores_the_background(tiny_models, crop):
    encoder = load_encoder(str(tiny_models["clip"][1]))
    rng = torch.Generator().manual_seed(6)
    obj = torch.randint(0, 256, (64, 96, 3), generator=rng) / 255.0
    mask = torch.zeros(64, 96)
    mask[16:48, 20:70] = 1
    other = obj.clone()
    other[mask == 0] = torch.randint(0, 256, (int((mask == 0).sum()), 3), generator=rng) / 255.0
    plain = encoder.encode_images(comfy_images_to_pil(torch.stack([obj, other])))
    assert image_similarity(plain[:1], plain[1:]) < 1 - 1e-4  # the background counts without the mask
    views = [masked_view(img, mask, crop=crop) for img in (obj, other)]
    masked = encoder.encode_images([comfy_images_to_pil(v)[0] for v in views])
    assert torch.equal(masked[0], masked[1])
    assert image_similarity(masked[:1], masked[1:]) == pytest.approx(1.0, abs=1e-6)


def test_comfy_images_to_pil_rounds_to_uint8():
    image = torch.tensor([[[0.0, 0.5, 1.0], [0.2, 0.998, 0.001]]]).unsqueeze(0)  # (1, 1, 2, 3)
    (pil,) = comfy_images_to_pil(image)
    assert pil.size == (2, 1) and np.asarray(pil).tolist() == [[[0, 128, 255], [51, 254, 0]]]


# --------------------------------------------------------------------------- refusals


def test_missing_paths_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No model at '.*nowhere'.*config\.json and model\.safetensors"):
        load_encoder(str(tmp_path / "nowhere"), kind="dino")
    with pytest.raises(FileNotFoundError, match=r"DINO ViT-S/16 in Hugging Face layout"):
        load_encoder(str(tmp_path / "nowhere"), kind="dino")
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors.*vocab\.json, merges\.txt"):
        load_encoder(str(tmp_path), kind="clip")


def test_pickles_are_refused_unread(tmp_path):
    bogus = tmp_path / "dino.pth"
    bogus.write_bytes(b"not even a pickle")  # the loader must not open it
    with pytest.raises(EvalModelError, match=r"'dino\.pth' is a pickle checkpoint.*Convert it to safetensors"):
        load_encoder(str(bogus))
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(EvalModelError, match=r"'pytorch_model\.bin' is a pickle.*model\.safetensors from the same"):
        load_encoder(str(folder))


@needs_tokenizer
def test_other_layouts_are_refused(tmp_path, tiny_models):
    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(unknown))
    with pytest.raises(EvalModelError, match=r"not a CLIP, DINO or DINOv2 model in the Hugging Face layout.*foo\.weight"):
        load_encoder(str(unknown))
    text_file = tmp_path / "notes.safetensors"
    text_file.write_text("hello")
    with pytest.raises(EvalModelError, match="not a readable safetensors file"):
        load_encoder(str(text_file))

    clip_state = load_file(str(tiny_models["clip"][1] / "model.safetensors"))
    vision_only = tmp_path / "clip_vision.safetensors"
    save_file({k: v for k, v in clip_state.items() if not k.startswith(("text_model.", "text_projection"))},
              str(vision_only))
    with pytest.raises(EvalModelError, match="CLIP vision tower alone.*need the whole CLIP model"):
        load_encoder(str(vision_only))

    dino_file = tiny_models["dino"][1] / "model.safetensors"
    with pytest.raises(EvalModelError, match="holds a dino model, but a clip model was asked for"):
        load_encoder(str(dino_file), kind="clip")
    damaged = tmp_path / "damaged.safetensors"
    save_file({k: v for k, v in load_file(str(dino_file)).items() if k != "layernorm.weight"}, str(damaged))
    with pytest.raises(EvalModelError, match="lacks 1 tensors of a dino model.*damaged or incomplete"):
        load_encoder(str(damaged))


@needs_tokenizer
def test_clip_file_without_tokenizer_says_where_to_find_one(tiny_models, tmp_path):
    clip_file = tiny_models["clip"][1] / "model.safetensors"
    with pytest.raises(EvalModelError, match=r"No CLIP tokenizer.*tokenizer_dir=<ComfyUI>/comfy/sd1_tokenizer"):
        load_encoder(str(clip_file))
    with pytest.raises(EvalModelError, match=r"looked in '.*empty'.*vocab\.json and merges\.txt"):
        load_encoder(str(clip_file), tokenizer_dir=str(tmp_path / "empty"))
