"""The pack inside a real ComfyUI server (`main.py --cpu`) on 127.0.0.1, driven over HTTP."""

import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import BASE_DIR, CATVERSION_DATA, COMFY_DIR, TINY_GLOBAL_MAPPER

from elite_test_pack.comfy_server import run_prompt, running_server, wait_for_history
from elite_test_pack.workflows import EXAMPLES, api_workflow, needs_shared_data, node_id, save_node_id, tiny_prompt

TESTS = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("ELITE_CACHE", TESTS.parent / ".cache"))  # where scripts/bootstrap.sh installs
FRONTEND_MODULES = CACHE / "frontend-check" / "node_modules"
NEWEST_FRONTEND = CACHE / "frontend-newest"


def _frontend_version(site: Path | None) -> str:
    """Version of comfyui-frontend-package: the one this ComfyUI pins (installed in the venv) or the
    newest one the bootstrap put under .cache/frontend-newest."""
    if site is None:
        try:
            return importlib.metadata.version("comfyui-frontend-package")
        except importlib.metadata.PackageNotFoundError:
            return "none"
    found = sorted(site.glob("comfyui_frontend_package-*.dist-info"))
    return found[0].name.split("-")[1] if found else "missing"


FRONTENDS = [  # the fixtures that hold each frontend's report
    pytest.param("pinned_frontend", id=f"pinned-{_frontend_version(None)}"),
    pytest.param("newest_frontend", id=f"newest-{_frontend_version(NEWEST_FRONTEND)}"),
]


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
    assert sorted(templates.get("comfyui-elite")) == sorted(EXAMPLES)


def test_every_node_has_a_help_page_the_server_serves(server):
    """The frontend shows web/docs/<node id>.md as the node's help page: it fetches
    /extensions/<pack folder>/docs/<node id>.md, the pack folder read from object_info's python_module."""
    from comfyui_elite.nodes import ELITE_NODES

    url, _ = server
    info = requests.get(f"{url}/object_info", timeout=30).json()
    for node in ELITE_NODES:
        node_id = node.define_schema().node_id
        assert info[node_id]["python_module"] == "custom_nodes.comfyui-elite", info[node_id]["python_module"]
        page = requests.get(f"{url}/extensions/comfyui-elite/docs/{node_id}.md", timeout=10)
        assert page.status_code == 200, node_id
        assert page.text.startswith("# ") and len(page.text) > 150, node_id
        assert page.text.splitlines()[0] == f"# {info[node_id]['display_name']}", node_id  # the title the menu shows


def test_workflow_over_http_produces_an_image(server):
    url, _ = server
    prompt = tiny_prompt("02_elite_global_local")
    prompt[save_node_id(prompt)]["inputs"]["filename_prefix"] = "ELITE_http"
    entry = run_prompt(url, prompt, timeout=300)
    (image,) = entry["outputs"][save_node_id(prompt)]["images"]
    assert (BASE_DIR / "output" / image["subfolder"] / image["filename"]).is_file()


def test_a_failing_workflow_reports_the_elite_message(server):
    url, _ = server
    prompt = tiny_prompt("02_elite_global_local")
    prompt[node_id(prompt, "ELITEConditioning")]["inputs"]["placeholder"] = "zebra crossing"
    with pytest.raises(RuntimeError, match="must be a single word without spaces"):
        run_prompt(url, prompt, timeout=300)


# The pack's refusals arrive through the server.


def test_a_missing_mapper_is_refused_at_validation_over_http(server):
    """HTTP 400 with the node's error."""
    url, _ = server
    missing = tiny_prompt("02_elite_global_local")
    missing[node_id(missing, "ELITELocalMapperLoader")]["inputs"]["mapper_name"] = "local_mapper.pt"
    with pytest.raises(RuntimeError, match=r"ELITE mapper 'local_mapper.pt' was not found.*Put local_mapper.pt"):
        run_prompt(url, missing, timeout=300)


@pytest.mark.parametrize("name, value, expected", [
    ("random_flip", "yes", 'random_flip: received "yes" (a string); expected true or false'),
    ("random_flip", "false", 'random_flip: received "false" (a string); expected true or false'),
    ("steps", 2.5, "steps: received 2.5 (a number); expected a whole number from 1 to 100000"),
    ("seed", 2**64, f"seed: received {2**64} (a whole number); expected a whole number from 0 to {2**63 - 1}"),
    ("filename_prefix", "x" * 300, "is too long for a file name: it is 300 characters, 300 bytes in UTF-8"),
])
def test_values_a_json_client_sends_are_refused_at_validation_over_http(server, name, value, expected):
    """HTTP 400 naming the input, the value and what it takes; ComfyUI alone would take "false" as true,
    2.5 as 2, and fail on the seed when the node runs."""
    url, _ = server
    prompt = tiny_prompt("08_catversion_train_then_apply")
    prompt[node_id(prompt, "CatVersionTrain")]["inputs"].update({"steps": 1, "resolution": 64, name: value})
    reply = requests.post(f"{url}/prompt", json={"prompt": prompt}, timeout=60)
    assert reply.status_code == 400, reply.text[:2000]
    shown = [e["details"] for node in reply.json()["node_errors"].values() for e in node["errors"]]
    assert shown and all(expected in details for details in shown), shown[:2]


def test_a_nan_strength_is_refused_by_the_node_over_http(server):
    """A NaN λ, which JSON clients can send, is refused by the node while executing."""
    url, _ = server
    prompt = tiny_prompt("02_elite_global_local")
    prompt[node_id(prompt, "ELITELocalAttnPatch")]["inputs"]["strength"] = float("nan")
    reply = requests.post(f"{url}/prompt", data=json.dumps({"prompt": prompt}),  # json.dumps writes NaN
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 200, reply.text
    prompt_id = reply.json()["prompt_id"]
    entry = wait_for_history(url, prompt_id)
    (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert error["node_type"] == "ELITELocalAttnPatch"
    assert "strength (λ) is NaN (not a number); it must be a number from 0.0 to 2.0" in error["exception_message"]
    # the NaN stays in the server's history, which no browser can parse: clear it for the frontend checks
    requests.post(f"{url}/history", json={"clear": True}, timeout=10)


def _skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# ComfyUI's own frontend (headless Chromium) loads each shipped UI workflow without an error and turns
# it into exactly the API-format twin the other tests execute: on the frontend this ComfyUI pins and on
# the newest one, served by the same ComfyUI with --front-end-root. On the pinned one, each template is
# also queued as the Run button queues it: the request carries the twin, and the same workflow on the
# tiny random models (the only change) runs to completion on the server.


def _frontend_tools() -> tuple[str, str]:
    chromium, node = shutil.which("chromium"), shutil.which("node")
    if not (chromium and node and (FRONTEND_MODULES / "playwright-core").is_dir()):
        _skip_or_fail("the frontend check needs Debian's chromium, node and playwright-core (make test installs them)")
    return chromium, node


@pytest.fixture(scope="module")
def pinned_frontend(server) -> dict:
    """The pinned frontend's report on every checked example, each also queued with the Run button."""
    chromium, node = _frontend_tools()
    url, _ = server
    return _load_in_frontend(url, chromium, node, queue=True)


@pytest.fixture(scope="module")
def newest_frontend(server) -> dict:
    """The newest frontend's report on every checked example, from a second server on the same base folder."""
    chromium, node = _frontend_tools()
    static = NEWEST_FRONTEND / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        _skip_or_fail(f"the newest frontend is not installed at {NEWEST_FRONTEND} (make test installs it)")
    log_path = BASE_DIR / "server-newest-frontend.log"
    with running_server(COMFY_DIR, BASE_DIR, log_path, extra_args=["--front-end-root", str(static)],
                        timeout=180) as url:
        return _load_in_frontend(url, chromium, node)


def test_the_run_button_queues_each_examples_twin(pinned_frontend):
    report = pinned_frontend
    for name in _checked_examples():
        assert report[name]["prompt_id"], (name, report[name])
        assert _api_nodes(report[name]["queued"]) == _twin(name), name


def test_the_examples_queued_from_the_frontend_run_to_completion(server, pinned_frontend):
    url, _ = server
    report = pinned_frontend
    for name in _checked_examples():
        entry = wait_for_history(url, report[name]["prompt_id"], timeout=600)
        assert entry["status"]["status_str"] == "success", (name, entry["status"])
        saved = [image for output in entry["outputs"].values() for image in output.get("images", [])
                 if image["type"] == "output"]
        assert saved and all((BASE_DIR / "output" / i["subfolder"] / i["filename"]).is_file() for i in saved), name


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_examples_load_in_the_real_frontend_without_an_error(frontend, request):
    report = request.getfixturevalue(frontend)
    for name in _checked_examples():
        assert report[name]["errors"] == [], name


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_the_real_frontend_converts_each_example_to_its_twin(frontend, request):
    report = request.getfixturevalue(frontend)
    for name in _checked_examples():
        assert _api_nodes(report[name]["output"]) == _twin(name), name


def _api_nodes(prompt: dict) -> dict:
    """What the executor reads of an API prompt (the frontend adds display-only `_meta`)."""
    return {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in prompt.items()}


def _twin(name: str) -> dict:
    return api_workflow(name)


def _checked_examples() -> list[str]:
    """The examples the frontend check loads: those whose model files exist here (a CatVersion
    example's adapter combo needs the authors' files from ../shared)."""
    return [name for name in EXAMPLES if not needs_shared_data(name) or CATVERSION_DATA.is_dir()]


def _load_in_frontend(url: str, chromium: str, node: str, queue: bool = False) -> dict:
    files = [str(TESTS.parent / "example_workflows" / f"{name}.json") for name in _checked_examples()]
    env = {**os.environ, "NODE_PATH": str(FRONTEND_MODULES)}
    if queue:
        swaps = BASE_DIR / "frontend_queue_prompts.json"
        swaps.write_text(json.dumps({name: tiny_prompt(name) for name in _checked_examples()}))
        env["QUEUE_PROMPTS"] = str(swaps)
    done = subprocess.run([node, str(TESTS / "frontend" / "load_workflows.js"), url, chromium, *files],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


# CatVersion Train Concept in the real frontend: the training template's Run pressed twice trains once,
# a restarted server loads the saved adapter instead of training, and `retrain` (set on the node's
# widget) trains again; the step, loss and saved file's name reach the browser.

TRAIN_PREFIX = "frontend_train"
TRAIN_TEMPLATE = "08_catversion_train_then_apply"


def _run_template_in_frontend(url: str, name: str, runs: list[dict], prompts: dict, key_by: list[str]) -> list[dict]:
    chromium, node = _frontend_tools()
    plan = BASE_DIR / f"frontend_runs_{name}.json"
    plan.write_text(json.dumps({"runs": runs, "prompts": prompts, "key_by": key_by}))
    env = {**os.environ, "NODE_PATH": str(FRONTEND_MODULES), "RUNS": str(plan)}
    done = subprocess.run([node, str(TESTS / "frontend" / "run_template.js"), url, chromium,
                           str(TESTS.parent / "example_workflows" / f"{name}.json")],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)["runs"]


def _training_prompts() -> tuple[str, dict]:
    """The training template on the tiny models, with a seed of its own (so that no other test's
    adapter matches it), once with retrain off and once on."""
    prompts = {}
    for retrain in (False, True):
        prompt = tiny_prompt(TRAIN_TEMPLATE)
        train = node_id(prompt, "CatVersionTrain")
        prompt[train]["inputs"].update(filename_prefix=TRAIN_PREFIX, seed=777, retrain=retrain)
        prompts[json.dumps(retrain)] = prompt
    return train, prompts


def _trained_files() -> list[str]:
    return sorted(f for f in os.listdir(BASE_DIR / "models" / "catversion") if f.startswith(TRAIN_PREFIX))


def _train_node_text(url: str, run: dict, train: str) -> str:
    entry = wait_for_history(url, run["prompt_id"], timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (text,) = entry["outputs"][train]["text"]
    return text


def test_the_training_template_run_from_the_frontend_trains_once_even_across_a_restart(server):
    train, prompts = _training_prompts()
    key_by = ["CatVersionTrain", "retrain"]
    url, _ = server
    first, second = _run_template_in_frontend(url, TRAIN_TEMPLATE, [{}, {}], prompts, key_by)
    saved = f"{TRAIN_PREFIX}_00001.safetensors"
    assert _train_node_text(url, first, train).startswith(f"Saved {saved}")
    texts = [t["text"] for t in first["texts"] if t["node"] == train]
    assert texts[0].startswith("step 1/2  loss ") and texts[-1].startswith(f"Saved {saved}")  # shown on the node
    assert any(e["node"] == train and e["output"]["text"][0].startswith(f"Saved {saved}") for e in first["executed"])
    # the second Run: nothing trains (no step shown), no new file
    assert not [t for t in second["texts"] if t["text"].startswith("step ")] and _trained_files() == [saved]

    with running_server(COMFY_DIR, BASE_DIR, BASE_DIR / "server-restarted.log", timeout=180) as restarted:
        again, retrained = _run_template_in_frontend(
            restarted, TRAIN_TEMPLATE, [{}, {"set": {"CatVersionTrain": {"retrain": True}}}], prompts,
            key_by)
        found = _train_node_text(restarted, again, train)
        assert found.startswith(f"Found {saved}") and "not training again" in found
        assert [t["text"] for t in again["texts"] if t["node"] == train] == [found]
        # retrain switched on in the node's widget: the frontend sends it, and the node trains anew
        assert retrained["queued"][train]["inputs"]["retrain"] is True
        assert _train_node_text(restarted, retrained, train).startswith(f"Saved {TRAIN_PREFIX}_00002.safetensors")
        assert any(t["text"].startswith("step 2/2  loss ") for t in retrained["texts"])
    assert _trained_files() == [saved, f"{TRAIN_PREFIX}_00002.safetensors"]
