"""A real ComfyUI server (`main.py`, on the CPU unless told otherwise) on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(comfy_dir: Path, base_dir: Path | None, log_path: Path, extra_args=(), timeout: float = 300,
                   cpu: bool = True, python: str | Path = sys.executable, env: dict | None = None,
                   ready_path: str = "/object_info/ELITEEncoder"):
    """Start ComfyUI on a free port (its own base folder where ``base_dir`` is None, as a user starts
    it), wait until ``ready_path`` answers (by default: the ELITE nodes), yield its URL, stop it."""
    port = free_port()
    base = ["--base-directory", str(base_dir)] if base_dir is not None else []
    cmd = [str(python), "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(port), *base,
           "--disable-auto-launch", "--dont-print-server", "--database-url", "sqlite:///:memory:", *extra_args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ComfyUI did not start; its log:\n{Path(log_path).read_text()[-4000:]}")
            try:
                if requests.get(f"{url}{ready_path}", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_prompt(url: str, prompt: dict, timeout: float = 3600) -> dict:
    """Queue an API-format prompt and wait for it; return its /history entry.

    Raises RuntimeError with ComfyUI's message when the prompt is refused or fails.
    """
    reply = requests.post(f"{url}/prompt", json={"prompt": prompt, "client_id": str(uuid.uuid4())}, timeout=60)
    if reply.status_code != 200:
        raise RuntimeError(f"ComfyUI refused the workflow: {reply.text}")
    entry = wait_for_history(url, reply.json()["prompt_id"], timeout)
    if entry["status"]["status_str"] != "success":
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        raise RuntimeError(f"The workflow failed: {errors[0]['exception_message'] if errors else entry['status']}")
    return entry


def wait_for_history(url: str, prompt_id: str, timeout: float = 3600) -> dict:
    """The /history entry of a queued prompt once it has finished, successfully or not."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = requests.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        if entry and entry["status"].get("completed") is not None:
            return entry
        time.sleep(0.5)
    raise RuntimeError(f"The workflow did not finish within {timeout} s.")
