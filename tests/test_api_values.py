"""Values a JSON client can send that the frontend never does, and file names the file system cannot
take: each refused when the prompt is validated (nothing runs), with a message that names the input,
the value received and what it takes.

ComfyUI converts a widget's value before any check (``bool("false")`` is True, ``int(2.5)`` is 2) and
skips its min/max checks for a node whose ``validate_inputs`` takes ``**kwargs``. A prompt "as posted"
goes through the pack's on_prompt handler first, as the server runs it (tests/test_http_server.py
checks the real server does).
"""

from __future__ import annotations

import copy
import errno
import json
import os

import pytest
from conftest import BASE_DIR, CATVERSION_MODELS

from comfyui_elite.elite_core.common import files
from comfyui_elite.elite_core.common.checks import InputError
from comfyui_elite.nodes import ELITE_NODES
from comfyui_elite.nodes.elite_types import RefusedWidgetValue, refuse_wrong_widget_types
from comfyui_elite.nodes.nodes_catversion import CatVersionTrain
from comfyui_elite.nodes.nodes_concepts import ELITESaveConcept
from elite_test_pack.in_process import submit
from elite_test_pack.workflows import EXAMPLES, api_workflow, node_id, tiny_prompt

SEED_MAX = 2**63 - 1  # CatVersion Train's seed widget
NAME_MAX = os.pathconf(str(CATVERSION_MODELS), "PC_NAME_MAX")


def training_prompt(**inputs) -> dict:
    """The training template on the tiny models; should a case pass by mistake, it trains 1 step at 64 px."""
    prompt = tiny_prompt("08_catversion_train_then_apply")
    prompt[node_id(prompt, "CatVersionTrain")]["inputs"].update({"steps": 1, "resolution": 64, **inputs})
    return prompt


def save_concept_prompt(**inputs) -> dict:
    """The saved-concept template with Save Concept as its only output (ComfyUI runs the outputs
    that pass validation and reports the others)."""
    prompt = tiny_prompt("04_elite_saved_concept")
    del prompt[node_id(prompt, "SaveImage")]
    prompt[node_id(prompt, "ELITESaveConcept")]["inputs"].update(**inputs)
    return prompt


def refused(prompt: dict, posted: bool = True) -> str:
    """The validation text the frontend shows; ``posted``: the prompt first goes through the pack's
    on_prompt handler, as the server's /prompt does."""
    if posted:
        prompt = refuse_wrong_widget_types({"prompt": prompt}, ELITE_NODES)["prompt"]
    executor, refusal = submit(prompt)
    assert executor is None, "the prompt was not refused at validation"
    error, node_errors = refusal
    json.dumps(node_errors)  # the server sends them back as JSON
    shown = [f"{e['message']}: {e['details']}" for node in node_errors.values() for e in node["errors"]]
    assert "RefusedWidgetValue" not in str(shown)  # each wrong value is reported once, as posted
    return " | ".join(shown)


# --------------------------------------------------------------------------- widget values


@pytest.mark.parametrize("posted", [True, False], ids=["as posted", "in-process"])
def test_a_seed_beyond_the_widgets_range_is_refused_at_validation(posted):
    shown = refused(training_prompt(seed=2**64), posted)
    assert f"seed: received {2**64} (a whole number); expected a whole number from 0 to {SEED_MAX}" in shown
    shown = refused(training_prompt(steps=0), posted)
    assert "steps: received 0 (a whole number); expected a whole number from 1 to 100000" in shown


@pytest.mark.parametrize("name, value, expected", [
    ("random_flip", "yes", '"yes" (a string); expected true or false'),
    ("random_flip", "false", '"false" (a string); expected true or false'),
    ("random_flip", 0, "0 (a whole number); expected true or false"),
    ("random_flip", None, "null (null); expected true or false"),
    ("steps", "12", '"12" (a string); expected a whole number from 1 to 100000'),
    ("steps", 2.5, "2.5 (a number); expected a whole number from 1 to 100000"),
    ("steps", True, "true (a boolean); expected a whole number from 1 to 100000"),
    ("learning_rate", "0.01", '"0.01" (a string); expected a number from 1e-06 to 1.0'),
    ("class_word", 7, "7 (a whole number); expected text (a string)"),
])
def test_a_value_of_the_wrong_type_is_refused_as_posted_not_converted(name, value, expected):
    shown = refused(training_prompt(**{name: value}))
    assert f"{name}: received {expected}" in shown, shown


def test_the_same_check_refuses_wrong_types_in_every_pack_node():
    prompt = save_concept_prompt(export_embedding="false")
    assert 'export_embedding: received "false" (a string); expected true or false' in refused(prompt)
    prompt = tiny_prompt("02_elite_global_local")
    prompt[node_id(prompt, "ELITELocalAttnPatch")]["inputs"]["strength"] = "0.6"
    assert 'strength: received "0.6" (a string); expected a number from 0.0 to' in refused(prompt)


@pytest.mark.parametrize("name", EXAMPLES)
def test_what_the_frontend_sends_passes_the_check_unchanged(name):
    """The API twins are what the real frontends make of the templates (tests/test_workflows.py)."""
    prompt = api_workflow(name)
    checked = refuse_wrong_widget_types({"prompt": copy.deepcopy(prompt)}, ELITE_NODES)["prompt"]
    assert checked == prompt
    assert not [v for node in checked.values() for v in node["inputs"].values() if isinstance(v, RefusedWidgetValue)]


def test_a_whole_float_and_a_link_are_not_refused():
    prompt = training_prompt(steps=1.0, seed=[node_id(training_prompt(), "ELITEExampleConcept"), 0])
    checked = refuse_wrong_widget_types({"prompt": prompt}, ELITE_NODES)["prompt"]
    inputs = checked[node_id(checked, "CatVersionTrain")]["inputs"]
    assert inputs["steps"] == 1.0 and not isinstance(inputs["steps"], RefusedWidgetValue)
    assert isinstance(inputs["seed"], list)


# --------------------------------------------------------------------------- file names too long


def test_the_limit_is_the_file_systems_own_and_counted_in_utf8_bytes(tmp_path):
    """The longest name the check accepts can be created; one byte more cannot; characters outside
    ASCII count as the bytes they take."""
    limit = files.name_max(str(tmp_path))
    longest = "a" * limit
    files.check_name_length(str(tmp_path), longest, longest, "name")
    (tmp_path / longest).write_bytes(b"")
    for name in ("a" * (limit + 1), "日" * (limit // 3 + 1)):  # the second: fewer characters than the limit
        with pytest.raises(OSError) as made:
            (tmp_path / name).write_bytes(b"")
        assert made.value.errno == errno.ENAMETOOLONG
        size = len(name.encode("utf-8"))
        with pytest.raises(InputError, match=rf"{len(name)} characters, {size} bytes in UTF-8.* at most {limit} bytes"):
            files.check_name_length(str(tmp_path), name, name, "name")


@pytest.mark.parametrize("prefix", ["x" * 300, "é" * 150], ids=["300 characters", "300 bytes"])
def test_a_name_too_long_is_refused_at_validation(prefix):
    for make, node in ((training_prompt, "CatVersion Train"), (save_concept_prompt, "Save Concept")):
        shown = refused(make(filename_prefix=prefix), posted=False)
        assert "is too long for a file name" in shown and f"{len(prefix)} characters, 300 bytes in UTF-8" in shown, node
        assert f"at most {NAME_MAX} bytes per name" in shown, node
    assert not [f for f in os.listdir(CATVERSION_MODELS) if f.startswith(prefix[:10])]


def test_the_counter_and_suffix_are_counted():
    """A run of 2 steps stopped after 1 is saved as <name>_00001_step1_of_2.safetensors: the longest
    name whose file fits is accepted, one byte more is refused (the temporary file's name is short)."""
    added = len("_00001_step1_of_2.safetensors")
    fits, too_long = "a" * (NAME_MAX - added), "a" * (NAME_MAX - added + 1)
    assert CatVersionTrain.validate_inputs(filename_prefix=fits, steps=2) is True
    assert "is too long for a file name" in CatVersionTrain.validate_inputs(filename_prefix=too_long, steps=2)
    concept_added = len("_00001.safetensors")
    assert ELITESaveConcept.validate_inputs("c" * (NAME_MAX - concept_added)) is True
    assert "too long" in ELITESaveConcept.validate_inputs("c" * (NAME_MAX - concept_added + 1))
    # the accepted names really are files the folders take
    concepts = BASE_DIR / "models" / "elite_concepts"
    for folder, name in ((CATVERSION_MODELS, fits + "_00001_step1_of_2.safetensors"),
                         (concepts, "c" * (NAME_MAX - concept_added) + "_00001.safetensors")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
        (folder / name).unlink()
