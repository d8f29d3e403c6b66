"""The shipped example workflow: UI file, its API twin, and whole runs through ComfyUI's executor."""

import importlib.util
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BASE_DIR, TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER
from PIL import Image

import nodes

from elite_test_pack.in_process import run_prompt
from elite_test_pack.workflows import (
    API_WORKFLOWS,
    EXAMPLES,
    needs_shared_data,
    node_id,
    save_node_id,
    tiny_prompt,
    ui_to_api,
    with_tiny_models,
)

REPO = Path(__file__).resolve().parents[1]
# The node types each example shows off.
ELITE_NODES = {"ELITEGlobalMapperLoader", "ELITEEncoder", "ELITEConditioning", "ELITELocalAttnPatch"}
EXAMPLE_NODES = {
    "01_elite_global": ELITE_NODES, "02_elite_global_local": ELITE_NODES,
    "03_elite_prepare_from_photo": ELITE_NODES | {"ELITEPrepareConcept", "ELITEAttentionMap", "ELITEExampleConcept"},
    "04_elite_saved_concept": ELITE_NODES | {"ELITESaveConcept", "ELITELoadConcept"},
    "05_elite_with_lora": ELITE_NODES | {"LoraLoaderModelOnly"},
    "06_elite_two_concepts": ELITE_NODES | {"MaskComposite", "InvertMask"},
    "07_catversion_teddybear": {"CatVersionLoader", "CatVersionApply"},
    "08_catversion_train_then_apply": {"CatVersionTrain", "CatVersionApply"},
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_ui_format_with_known_nodes(name):
    workflow = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
    assert {"nodes", "links", "version"} <= workflow.keys()
    types = {node["type"] for node in workflow["nodes"]}
    assert EXAMPLE_NODES[name] <= types
    assert all(t in nodes.NODE_CLASS_MAPPINGS for t in types - {"Note"})
    for node in workflow["nodes"]:  # what the frontend and the Manager read to fetch models and packs
        if node["type"] != "Note":
            assert node["properties"]["cnr_id"] in ("elite-personalize", "comfy-core"), node["type"]
        if node["type"] in ("CheckpointLoaderSimple", "CLIPVisionLoader", "ELITEGlobalMapperLoader",
                            "ELITELocalMapperLoader"):
            (model,) = node["properties"]["models"]
            assert model["name"] == node["widgets_values"][0] and model["url"].startswith("https://huggingface.co/")
    (note,) = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "Note"]
    assert "Change first:" in note, f"{name}'s Note does not say what to change first: {note!r}"
    if name.endswith("catversion_train_then_apply"):  # runs as shipped: no photo to place in the input folder first
        assert "LoadImage" not in types and "ELITEExampleConcept" in types
    with Image.open(REPO / "example_workflows" / f"{name}.jpg") as thumbnail:  # the template browser's picture
        assert thumbnail.format == "JPEG" and thumbnail.size == (512, 512)  # the browser shows a square


def test_templates_are_numbered_simplest_first():
    """The frontends title and sort a pack's templates by file name alone (docs/development.md,
    Templates): every template is `NN_name`, numbered from 01 without gaps, EXAMPLES lists them in that
    order, and the one that trains comes last."""
    shipped = sorted(path.stem for path in (REPO / "example_workflows").glob("*.json"))
    assert shipped == EXAMPLES
    assert [name[:3] for name in EXAMPLES] == [f"{i:02d}_" for i in range(1, len(EXAMPLES) + 1)]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+", name) for name in EXAMPLES)
    trains = [name for name in EXAMPLES if '"CatVersionTrain"' in (REPO / "example_workflows" / f"{name}.json").read_text()]
    assert trains == EXAMPLES[-1:]
    assert sorted(path.stem for path in (REPO / "example_workflows").glob("*.jpg")) == EXAMPLES
    assert sorted(path.stem for path in API_WORKFLOWS.glob("*.json")) == EXAMPLES


def _template_cards():
    spec = importlib.util.spec_from_file_location("elite_template_cards", REPO / "scripts" / "template_cards.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", EXAMPLES)
def test_thumbnail_is_the_card_the_template_makes_now(name):
    """The shipped thumbnail is what scripts/template_cards.py draws from the template as it is (its
    photos and prompt), compared after the same JPEG encoding in 16 px blocks."""
    cards = _template_cards()
    fresh = io.BytesIO()
    cards.compose(name).save(fresh, "JPEG", quality=90, optimize=True)
    drawn = np.asarray(Image.open(fresh).convert("RGB"), dtype=np.float32)
    with Image.open(REPO / "example_workflows" / f"{name}.jpg") as thumbnail:
        shipped = np.asarray(thumbnail.convert("RGB"), dtype=np.float32)
    blocks = np.abs(drawn - shipped).reshape(32, 16, 32, 16, 3).mean(axis=(1, 3, 4))
    assert blocks.max() < 5, (f"example_workflows/{name}.jpg is not the card the template makes now: run "
                              "`.cache/venv/bin/python scripts/template_cards.py`")


def test_a_card_shows_the_templates_photo_and_prompt():
    """What the card reads from the template: ELITE Example Concept's photos in graph order, a blank
    frame for each Load Image, and the prompt the sampler gets (not a muted row's)."""
    cards = _template_cards()
    two = json.loads((REPO / "example_workflows" / "06_elite_two_concepts.json").read_text())
    photos = cards.concept_photos(two)
    with Image.open(REPO / "assets" / "concepts" / "cat.jpg") as cat, Image.open(REPO / "assets" / "concepts" / "dog.jpg") as dog:
        assert [photo.size for photo in photos] == [cat.size, dog.size]
    assert cards.prompt_text(two) == "a photo of S and T sitting on the beach"
    saved = json.loads((REPO / "example_workflows" / "04_elite_saved_concept.json").read_text())
    assert cards.prompt_text(saved) == "a photo of S on the beach"  # the muted row says "in a garden"
    # a graph whose photos come from Load Image (the user's own): blank frames, the example's photo after them
    blanks = {"nodes": [{"id": 3, "type": "LoadImage", "widgets_values": ["mine.png", "image"]},
                        {"id": 1, "type": "LoadImage", "widgets_values": ["other.png", "image"]},
                        {"id": 7, "type": "ELITEExampleConcept", "widgets_values": ["cat"]}]}
    photos = cards.concept_photos(blanks)
    assert photos[:2] == [None, None] and photos[2].size == cat.size


@pytest.mark.parametrize("name", EXAMPLES)
def test_api_twin_is_the_conversion_of_the_ui_example(name):
    """The API-format twin the tests execute is exactly the shipped UI workflow.
    After changing a workflow, refresh the twins with ELITE_UPDATE_TWINS=1 make test."""
    converted = ui_to_api(json.loads((REPO / "example_workflows" / f"{name}.json").read_text()), nodes.NODE_CLASS_MAPPINGS)
    twin = API_WORKFLOWS / f"{name}.json"
    if os.environ.get("ELITE_UPDATE_TWINS") == "1":
        twin.write_text(json.dumps(converted, indent=1) + "\n")
    assert converted == json.loads(twin.read_text())


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_in_process_and_saves_an_image(name, request):
    if needs_shared_data(name):
        request.getfixturevalue("catversion_data")
    prompt = tiny_prompt(name)
    executor = run_prompt(prompt)
    assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]
    (image_info,) = executor.history_result["outputs"][save_node_id(prompt)]["images"]
    path = BASE_DIR / "output" / image_info["subfolder"] / image_info["filename"]
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 0  # a decoded latent, not a constant image


def execution_error(prompt) -> dict:
    executor = run_prompt(prompt)
    assert not executor.success
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("bad_prompt, message", [
    ("a photo of a cat", "The prompt has no placeholder 'S'"),
])
def test_workflow_errors_reach_the_user(bad_prompt, message):
    prompt = tiny_prompt("01_elite_global")
    prompt[node_id(prompt, "ELITEConditioning")]["inputs"]["text"] = bad_prompt
    error = execution_error(prompt)
    assert message in error["exception_message"]
    assert error["node_type"] == "ELITEConditioning"


def test_the_saved_concept_templates_second_row_reuses_the_concept_without_encoding(monkeypatch):
    """Run the template as shipped (it encodes and saves), then unmute its second row and run that
    row alone: the concept comes from the file, the encoder never runs."""
    from comfyui_elite.elite_core.comfyui import elite as comfy_elite

    shipped = tiny_prompt("04_elite_saved_concept")
    save_concept = node_id(shipped, "ELITESaveConcept")
    first_row_outputs = (save_node_id(shipped), save_concept)  # the second row is muted: not in the prompt
    executor = run_prompt(shipped)
    assert executor.success
    (saved,) = executor.history_result["outputs"][save_concept]["text"]
    name = saved.split()[1].rstrip(";")
    workflow = json.loads((REPO / "example_workflows" / "04_elite_saved_concept.json").read_text())
    for node in workflow["nodes"]:
        node["mode"] = 0
    prompt = with_tiny_models(ui_to_api(workflow, nodes.NODE_CLASS_MAPPINGS), TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER)
    prompt = {key: node for key, node in prompt.items() if key not in first_row_outputs}
    prompt[node_id(prompt, "ELITELoadConcept")]["inputs"]["concept_name"] = name

    def no_encoding(*args, **kwargs):
        raise AssertionError("the concept was encoded again")

    monkeypatch.setattr(comfy_elite, "encode_concept", no_encoding)
    executor = run_prompt(prompt)
    assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]
    assert executor.history_result["outputs"][save_node_id(prompt)]["images"]
