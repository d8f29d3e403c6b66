"""The pack inside a real ComfyUI server (`main.py --cpu`) on 127.0.0.1, driven over HTTP."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import BASE_DIR, COMFY_DIR, TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER
from elite_test_pack.comfy_server import run_prompt, running_server
from elite_test_pack.workflows import with_tiny_models
from test_workflows import EXAMPLES

TESTS = Path(__file__).resolve().parent
API_TWIN = TESTS / "api_workflows" / "elite_global_local.json"
FRONTEND_MODULES = TESTS.parent / ".cache" / "frontend-check" / "node_modules"


@pytest.fixture(scope="module")
def server():
    log_path = BASE_DIR / "server.log"
    with running_server(COMFY_DIR, BASE_DIR, log_path, timeout=180) as url:
        yield url, log_path


def test_pack_imports_cleanly(server):
    _, log_path = server
    log = log_path.read_text()
    assert "comfyui-elite" in log
    assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and "elite" in line]


def test_nodes_and_templates_are_published(server):
    url, _ = server
    info = requests.get(f"{url}/object_info/ELITEConditioning", timeout=10).json()["ELITEConditioning"]
    assert info["category"] == "ELITE"
    assert "placeholder" in info["input"]["required"]
    mappers = requests.get(f"{url}/object_info/ELITEGlobalMapperLoader", timeout=10).json()
    assert TINY_GLOBAL_MAPPER in json.dumps(mappers)
    templates = requests.get(f"{url}/workflow_templates", timeout=10).json()
    assert sorted(templates.get("comfyui-elite")) == ["elite_global", "elite_global_local"]


def test_workflow_over_http_produces_an_image(server):
    url, _ = server
    prompt = with_tiny_models(json.loads(API_TWIN.read_text()), TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER)
    prompt["12"]["inputs"]["filename_prefix"] = "ELITE_http"
    entry = run_prompt(url, prompt, timeout=300)
    (image,) = entry["outputs"]["12"]["images"]
    assert (BASE_DIR / "output" / image["subfolder"] / image["filename"]).is_file()


def test_a_failing_workflow_reports_the_elite_message(server):
    url, _ = server
    prompt = with_tiny_models(json.loads(API_TWIN.read_text()), TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER)
    prompt["6"]["inputs"]["placeholder"] = "zebra crossing"
    with pytest.raises(RuntimeError, match="must be a single word without spaces"):
        run_prompt(url, prompt, timeout=300)


def test_examples_load_in_the_real_frontend_and_convert_to_their_twins(server):
    """ComfyUI's own frontend (headless Chromium) loads each shipped UI workflow without an error and
    turns it into exactly the API-format twin the other tests execute."""
    chromium, node = shutil.which("chromium"), shutil.which("node")
    if not (chromium and node and (FRONTEND_MODULES / "playwright-core").is_dir()):
        reason = "the frontend check needs Debian's chromium, node and playwright-core (make test installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    url, _ = server
    files = [str(TESTS.parent / "example_workflows" / f"{name}.json") for name in EXAMPLES]
    done = subprocess.run([node, str(TESTS / "frontend" / "load_workflows.js"), url, chromium, *files],
                          env={**os.environ, "NODE_PATH": str(FRONTEND_MODULES)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    for name in EXAMPLES:
        assert report[name]["errors"] == [], name
        built = {key: {"class_type": node["class_type"], "inputs": node["inputs"]}
                 for key, node in report[name]["output"].items()}
        assert built == json.loads((TESTS / "api_workflows" / f"{name}.json").read_text()), name
