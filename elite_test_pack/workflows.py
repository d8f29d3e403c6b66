"""Workflow helpers for tests and the demo: UI-format -> API-format, swapping in tiny models, the
API-format twins of the shipped examples, and finding a node of a prompt by its class."""

from __future__ import annotations

import copy
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The API-format twins of example_workflows/*.json (test data; test_workflows.py checks each against
# the conversion of its UI workflow).
API_WORKFLOWS = REPO_ROOT / "tests" / "api_workflows"
EXAMPLES = ["01_elite_global", "02_elite_global_local", "03_elite_prepare_from_photo", "04_elite_saved_concept",
            "05_elite_with_lora", "06_elite_two_concepts", "07_catversion_teddybear", "08_catversion_train_then_apply"]
# The tiny RANDOM mapper files tests/conftest.py writes into models/elite (tiny_mapper_state_dict
# seeds 10 and 11).
TINY_GLOBAL_MAPPER = "tiny_global_mapper.safetensors"
TINY_GLOBAL_MAPPER_PT = "tiny_global_mapper.pt"
TINY_LOCAL_MAPPER = "tiny_local_mapper.safetensors"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # notes live in the graph, never in the prompt

# Real loaders and the tiny random stand-ins of this test pack (same output order).
TINY_LOADERS = {
    "CheckpointLoaderSimple": ("ELITETestTinySD15Loader", {"seed": 0}),
    "CLIPVisionLoader": ("ELITETestTinyCLIPVisionLoader", {"seed": 3}),
}


def _widget_names(node_class) -> list[tuple[str, bool]]:
    """(name, has_control_value) for each widget input, in the order the UI stores their values."""
    spec = node_class.INPUT_TYPES()
    names = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES:
                names.append((name, bool(options.get("control_after_generate"))))
    return names


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    """Convert a UI-format workflow (nodes/links) to the API-format prompt the executor runs."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in FRONTEND_ONLY:
            continue
        inputs = {}
        linked = set()
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                _, from_node, from_slot, _, _, _ = links[entry["link"]]
                inputs[entry["name"]] = [str(from_node), from_slot]
                linked.add(entry["name"])
        values = iter(node.get("widgets_values", []))
        for name, has_control in _widget_names(node_classes[node["type"]]):
            if name in linked:
                continue
            inputs[name] = next(values)
            if has_control:
                next(values)  # "fixed"/"randomize": a UI setting, not an input
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def with_tiny_models(prompt: dict, mapper_name: str, local_mapper_name: str | None = None,
                     size: int = 64, steps: int = 3) -> dict:
    """The same workflow on tiny RANDOM models: loaders swapped, small latent, few steps."""
    prompt = copy.deepcopy(prompt)
    catversion = any(node["class_type"].startswith("CatVersion") for node in prompt.values())
    for node in prompt.values():
        kind = node["class_type"]
        if kind in TINY_LOADERS:
            node["class_type"], node["inputs"] = TINY_LOADERS[kind][0], dict(TINY_LOADERS[kind][1])
            if catversion and kind == "CheckpointLoaderSimple":
                node["inputs"]["real_size_clip"] = True  # CatVersion needs the real CLIP-L text layout
        elif kind == "ELITEGlobalMapperLoader":
            node["inputs"]["mapper_name"] = mapper_name
        elif kind == "ELITELocalMapperLoader":
            node["inputs"]["mapper_name"] = local_mapper_name
        elif kind == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size)
        elif kind == "KSampler":
            node["inputs"]["steps"] = steps
        elif kind == "SaveImage":
            node["inputs"]["filename_prefix"] = "ELITE_RANDOM_WEIGHTS"
        elif kind == "CatVersionTrain":
            node["inputs"].update(steps=2, resolution=size, filename_prefix="RANDOM_WEIGHTS_concept")
    return prompt


def node_ids(prompt: dict, class_type: str) -> list[str]:
    """The ids of an API-format prompt's nodes of one class, in the prompt's order."""
    return [key for key, node in prompt.items() if node["class_type"] == class_type]


def node_id(prompt: dict, class_type: str) -> str:
    """The id of an API-format prompt's only node of ``class_type`` (an error when it has none or several)."""
    found = node_ids(prompt, class_type)
    if len(found) != 1:
        raise LookupError(f"the prompt has {len(found)} {class_type} nodes ({found}), not exactly one")
    return found[0]


def add_node(prompt: dict, class_type: str, **inputs) -> str:
    """Add a node to an API-format prompt under an id no node has; return that id."""
    new_id = str(max((int(key) for key in prompt if key.isdigit()), default=0) + 1)
    prompt[new_id] = {"class_type": class_type, "inputs": inputs}
    return new_id


def save_node_id(prompt: dict) -> str:
    """The id of the workflow's (only) Save Image node."""
    return node_id(prompt, "SaveImage")


def needs_shared_data(name: str) -> bool:
    """The examples that load the authors' CatVersion adapters (../shared)."""
    return name == "07_catversion_teddybear"


def api_workflow(name: str) -> dict:
    """The API-format twin of the shipped example ``name``, as tests/api_workflows holds it."""
    return json.loads((API_WORKFLOWS / f"{name}.json").read_text())


def tiny_prompt(name: str, mapper_name: str = TINY_GLOBAL_MAPPER, local_mapper_name: str | None = TINY_LOCAL_MAPPER,
                **tiny) -> dict:
    """The shipped example ``name`` on the tiny RANDOM models and (by default) the tiny mapper files."""
    return with_tiny_models(api_workflow(name), mapper_name, local_mapper_name, **tiny)


def write_concept_image(path: str, size: int = 256) -> None:
    """A synthetic, object-centred concept image: a red ball with a highlight, on a transparent
    background (so Load Image's MASK is 1 around the ball and 0 on it)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (size, size), (235, 232, 225, 0))
    draw = ImageDraw.Draw(image)
    m = size // 6
    draw.ellipse((m, m, size - m, size - m), fill=(200, 30, 40, 255))
    draw.ellipse((size // 3, size // 4, size // 2, size // 2.4), fill=(245, 150, 150, 255))
    image.save(path)
