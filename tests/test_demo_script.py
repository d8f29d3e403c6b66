"""`make demo`'s choice between real and random weights, and the prompt it builds."""

import importlib.util
from pathlib import Path

import pytest

from elite_test_pack.workflows import node_id, save_node_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("elite_demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_models(root: Path, files: list[str]) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_random_weights_when_anything_is_missing(demo, tmp_path):
    models = make_models(tmp_path, ["checkpoints/v1-5.safetensors", "elite/global_mapper.pt"])
    assert demo.find_weights(models) is None
    prompt = demo.build_prompt(None, steps=None)
    kinds = {node["class_type"] for node in prompt.values()}
    assert "ELITETestTinySD15Loader" in kinds and "ELITELocalMapperLoader" in kinds
    assert prompt[save_node_id(prompt)]["inputs"]["filename_prefix"] == "ELITE_RANDOM_WEIGHTS"


def test_real_weights_global_and_local(demo, tmp_path):
    models = make_models(tmp_path, [
        "checkpoints/sd-v1-4.safetensors", "clip_vision/clip-vit-large-patch14.safetensors",
        "elite/global_mapper.pt", "elite/local_mapper.pt", "elite/notes.txt",
    ])
    real = demo.find_weights(models)
    assert real == {"checkpoints": "sd-v1-4.safetensors", "clip_vision": "clip-vit-large-patch14.safetensors",
                    "global": "global_mapper.pt", "local": "local_mapper.pt"}
    prompt = demo.build_prompt(real, steps=20)
    assert prompt[node_id(prompt, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] == "sd-v1-4.safetensors"
    assert prompt[node_id(prompt, "ELITELocalMapperLoader")]["inputs"]["mapper_name"] == "local_mapper.pt"
    assert prompt[node_id(prompt, "KSampler")]["inputs"]["steps"] == 20
    assert "ELITETestTinySD15Loader" not in {node["class_type"] for node in prompt.values()}
    concept = prompt[node_id(prompt, "ELITEEncoder")]["inputs"]["image"][0]  # the node the encoder's image comes from
    assert prompt[concept]["class_type"] == "ELITEExampleConcept"  # the shipped example, no file to place
    own = demo.build_prompt(real, steps=20, own_image=True)
    assert own[concept] == {"class_type": "LoadImage", "inputs": {"image": "elite_concept.png"}}
    # Load Image's MASK is 1 on the background
    assert own[node_id(own, "ELITEEncoder")]["inputs"]["invert_mask"] is True


def test_real_weights_without_local_mapper_use_the_global_workflow(demo, tmp_path):
    models = make_models(tmp_path, [
        "checkpoints/sd-v1-4.ckpt", "clip_vision/vit-l.safetensors", "elite/global_mapper.safetensors",
    ])
    prompt = demo.build_prompt(demo.find_weights(models), steps=None)
    assert "ELITELocalMapperLoader" not in {node["class_type"] for node in prompt.values()}
    assert prompt[node_id(prompt, "ELITEGlobalMapperLoader")]["inputs"]["mapper_name"] == "global_mapper.safetensors"
