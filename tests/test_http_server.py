"""The pack inside a real ComfyUI server (`main.py --cpu`) on 127.0.0.1, driven over HTTP."""

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import BASE_DIR, COMFY_DIR, TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER
from elite_test_pack.workflows import with_tiny_models

API_TWIN = Path(__file__).resolve().parent / "api_workflows" / "elite_global_local.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    log_path = BASE_DIR / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--base-directory", str(BASE_DIR), "--disable-auto-launch", "--dont-print-server",
             "--database-url", "sqlite:///:memory:"],
            cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited early:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/object_info/ELITEEncoder", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                pytest.fail(f"ComfyUI did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    reply = requests.post(f"{url}/prompt", json={"prompt": prompt, "client_id": str(uuid.uuid4())}, timeout=30)
    assert reply.status_code == 200, reply.text
    prompt_id = reply.json()["prompt_id"]
    deadline = time.time() + 300
    while time.time() < deadline:
        history = requests.get(f"{url}/history/{prompt_id}", timeout=10).json()
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            break
        time.sleep(0.5)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    (image,) = entry["outputs"]["12"]["images"]
    assert (BASE_DIR / "output" / image["subfolder"] / image["filename"]).is_file()
