"""What ComfyUI, ComfyUI-Manager and the Comfy Registry read from the pack."""

import re
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NEVER_IN_REQUIREMENTS = {"torch", "torchvision", "torchaudio", "numpy", "transformers", "safetensors"}


def test_comfyui_reads_the_registry_metadata():
    from comfy_config.config_parser import extract_node_configuration

    config = extract_node_configuration(str(REPO))
    name = config.project.name  # the Registry's node id: no leading digit, no consecutive specials
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", name)
    assert "comfyui" not in name.lower()  # the Registry's naming guidance
    assert re.fullmatch(r"\d+\.\d+\.\d+", config.project.version)
    assert config.project.supported_comfyui_version == ">=0.3.75"
    assert config.project.urls.repository.startswith("https://")
    assert (REPO / config.project.license.file).is_file()
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name
    # what a Registry or Manager search shows names every family of nodes the pack has
    assert {"ELITE", "CatVersion"} <= set(re.findall(r"\w+", config.tool_comfy.display_name))
    assert all(word in config.project.description for word in ("ELITE", "CatVersion", "DreamBench"))


def test_icon_is_shipped_where_its_url_points():
    from comfy_config.config_parser import extract_node_configuration

    icon_url = extract_node_configuration(str(REPO)).tool_comfy.icon
    match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+\.png)", icon_url)
    assert match, icon_url
    with Image.open(REPO / match.group(1)) as icon:
        assert icon.width <= 800 and icon.height <= 400


def test_requirements_install_nothing_comfyui_already_has():
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=\[ ;]", line)[0].lower() for line in lines if line}
    assert not names & NEVER_IN_REQUIREMENTS
    assert not (REPO / "install.py").exists()


def test_the_pack_is_a_v3_extension_only():
    pack = next(m for name, m in sys.modules.items() if name == "comfyui_elite")
    assert callable(pack.comfy_entrypoint)
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # ComfyUI would take the V1 path first


def test_training_code_stays_out_of_what_comfyui_imports():
    """ComfyUI loads __init__.py, nodes/ and elite_core/: none of them may reach the command-line
    trainers or their extra dependencies, so a Manager install needs nothing beyond ComfyUI."""
    shipped = [REPO / "__init__.py", *(REPO / "nodes").glob("*.py"), *(REPO / "elite_core").rglob("*.py")]
    for path in shipped:
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+[.\w]*(elite_training|accelerate)\b", text, re.M), path
    requirements = (REPO / "requirements.txt").read_text()
    assert "accelerate" not in requirements
    assert re.search(r"^accelerate\b", (REPO / "requirements-train.txt").read_text(), re.M)


def test_registry_issues_url_publish_workflow_and_ignored_files():
    from comfy_config.config_parser import extract_node_configuration

    urls = extract_node_configuration(str(REPO)).project.urls
    assert urls.issues.startswith("https://") and urls.issues.endswith("/issues")
    ignored = {line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"tests/", "elite_test_pack/", "bench/", ".cache/"} <= ignored  # elite_test_pack: RANDOM weights, tests only
    shipped = {"nodes/", "elite_core/", "assets/", "example_workflows/", "__init__.py"}
    assert not ignored & shipped  # what the nodes and templates need is packaged
    workflow = (REPO / ".github" / "workflows" / "publish.yml").read_text()
    assert "Comfy-Org/publish-node-action" in workflow and "REGISTRY_ACCESS_TOKEN" in workflow


def test_search_aliases_and_advanced_inputs_where_comfyui_supports_them():
    """Newer ComfyUI (0.33.0) gets search aliases and advanced widgets; 0.3.75 loads the same nodes
    without them (the helpers check the running ComfyUI's API)."""
    import inspect

    from comfy_api.latest import io

    from comfyui_elite.nodes.nodes_attn_patch import ELITELocalAttnPatch
    from comfyui_elite.nodes.nodes_encoder import ELITEEncoder

    schema = ELITEEncoder.define_schema()
    if "search_aliases" in inspect.signature(io.Schema).parameters:
        assert "personalize" in schema.search_aliases
    patch = {i.id: i for i in ELITELocalAttnPatch.define_schema().inputs}
    if "advanced" in inspect.signature(io.Float.Input).parameters:
        assert patch["start_percent"].advanced and patch["global_kv"].advanced
        assert not patch["strength"].advanced


def test_the_training_seed_is_never_randomized_by_the_frontend():
    """Every frontend gives an INT input named 'seed' a 'control after generate: randomize' widget unless
    the schema says otherwise; for CatVersion Train Concept a new seed would mean a new training on
    every Run, so the schema says so, and ComfyUI passes it on to the frontend."""
    from comfyui_elite.nodes.nodes_catversion import CatVersionTrain

    seed = next(i for i in CatVersionTrain.define_schema().inputs if i.id == "seed")
    assert seed.control_after_generate is False
    assert seed.as_dict()["control_after_generate"] is False
