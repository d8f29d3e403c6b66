"""ELITE Score: the papers' metrics inside a workflow, on tiny RANDOM metric encoders in the real
Hugging Face layouts placed in models/elite_eval."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BASE_DIR, COMFY_DIR

from comfyui_elite.elite_core.common.checks import ELITEInputError
from comfyui_elite.elite_core.elite.examples import load_example
from comfyui_elite.nodes.nodes_score import ELITEScore
from elite_test_pack.in_process import run_prompt, submit
from elite_test_pack.tiny_metric_models import save_clip_folder, tiny_clip, tiny_dino

TOKENIZER_DIR = COMFY_DIR / "comfy" / "sd1_tokenizer"
CLIP_FILE = "tiny-clip-vit-b-32.safetensors"
DINO_FOLDER_FILE = "tiny-dino-vits16/model.safetensors"


@pytest.fixture(scope="module", autouse=True)
def metric_encoders():
    """A CLIP as a single file (its tokenizer: ComfyUI's) and a DINO as a Hugging Face folder."""
    folder = BASE_DIR / "models" / "elite_eval"
    scratch = save_clip_folder(tiny_clip(), BASE_DIR / "scratch-clip", TOKENIZER_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CLIP_FILE).write_bytes((scratch / "model.safetensors").read_bytes())
    tiny_dino().save_pretrained(folder / "tiny-dino-vits16", safe_serialization=True)


def _score(images, reference, **kwargs):
    inputs = dict(prompt="a cat", clip_model=CLIP_FILE, dino_model=DINO_FOLDER_FILE) | kwargs
    return ELITEScore.execute(images, reference, **inputs).result


def test_the_concept_against_itself_scores_one():
    image, mask = load_example("cat")
    clip_t, clip_i, dino_i, masked, report = _score(image, image, reference_mask=mask, image_mask=mask)
    for value in (clip_i, dino_i, masked):
        assert value == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= clip_t <= 1.0
    assert report.splitlines()[0].startswith("CLIP-T: ")


def test_masked_clip_i_ignores_the_background_and_plain_clip_i_does_not():
    image, mask = load_example("cat")
    background = mask[..., None] < 0.5
    other = torch.where(background, torch.rand(image.shape, generator=torch.Generator().manual_seed(1)), image)
    _, clip_i, _, masked, _ = _score(other, image, reference_mask=mask, image_mask=mask)
    assert masked == pytest.approx(1.0, abs=1e-5)
    assert clip_i < 0.9999
    _, _, _, cropped, _ = _score(other, image, reference_mask=mask, image_mask=mask, crop_to_mask=True)
    assert cropped == pytest.approx(1.0, abs=1e-5)


def test_metrics_without_their_inputs_are_marked_not_scored():
    image, _ = load_example("dog")
    clip_t, clip_i, dino_i, masked, report = _score(image, image, prompt="", dino_model="none")
    assert (clip_t, dino_i, masked) == (-1.0, -1.0, -1.0)
    assert clip_i == pytest.approx(1.0, abs=1e-5)
    assert "CLIP-T" not in report and "DINO-I" not in report


def test_bad_inputs_get_messages():
    image, mask = load_example("cat")
    assert "choose a CLIP and/or a DINO model" in ELITEScore.validate_inputs(clip_model="none", dino_model="none")
    missing = ELITEScore.validate_inputs(clip_model="clip.safetensors", dino_model="none")
    assert "clip.safetensors" in missing and "elite_eval" in missing
    with pytest.raises(ELITEInputError, match="object mask is empty"):
        _score(image, image, reference_mask=torch.zeros_like(mask))
    with pytest.raises(ELITEInputError, match="2 masks for 1 images"):
        _score(image, image, reference_mask=mask.expand(2, -1, -1))


def test_the_score_node_runs_in_a_workflow():
    prompt = {
        "1": {"class_type": "ELITEExampleConcept", "inputs": {"example": "flower"}},
        "2": {"class_type": "ELITEScore", "inputs": {
            "images": ["1", 0], "reference": ["1", 0], "prompt": "a photo of a flower", "clip_model": CLIP_FILE,
            "dino_model": DINO_FOLDER_FILE, "reference_mask": ["1", 1], "crop_to_mask": False}},
    }
    executor = run_prompt(prompt)
    assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]
    (text,) = executor.history_result["outputs"]["2"]["text"]
    lines = dict(line.split(": ", 1) for line in text.splitlines())
    assert set(lines) == {"CLIP-T", "CLIP-I", "masked CLIP-I", "DINO-I"}
    assert lines["DINO-I"].startswith("1.0000") and lines["CLIP-I"].startswith("1.0000")
    refused = json.loads(json.dumps(prompt))
    refused["2"]["inputs"].update(clip_model="none", dino_model="none")
    executor, refusal = submit(refused)
    assert executor is None and "choose a CLIP and/or a DINO model" in json.dumps(refusal)
