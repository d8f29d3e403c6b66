"""`make demo`: run the ELITE example workflow through a real, headless ComfyUI server.

With real weights (an SD1.x checkpoint, CLIP ViT-L/14 vision, ELITE's global mapper) found in the
models folder, the example workflow runs on them. Otherwise it runs on tiny RANDOM demo weights in
the real layouts, says so loudly, and the image is noise: it proves the plumbing, not the quality.

Models folder: $ELITE_DEMO_MODELS, or ./demo_models, laid out like ComfyUI's models/:
    checkpoints/<SD1.x>.safetensors  clip_vision/<ViT-L-14>.safetensors  elite/global_mapper.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from comfy_test_pack.pack_import import elite_core_module  # noqa: E402
from comfy_test_pack.tiny_models import tiny_mapper_state_dict  # noqa: E402
from comfy_test_pack.workflows import with_tiny_models, write_concept_image  # noqa: E402

log = logging.getLogger("elite.demo")
WEIGHT_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
RANDOM_BANNER = """
##########################################################################
#  ELITE DEMO ON RANDOM WEIGHTS                                          #
#  No real SD1.x / CLIP ViT-L/14 / ELITE mapper files were found, so    #
#  this demo runs tiny randomly initialised models in the real layouts.  #
#  The image is NOISE: it shows the workflow runs, not what ELITE makes. #
#  Put real files under {models:<48}#
##########################################################################"""


def find_weights(models: Path) -> dict[str, str] | None:
    found = {}
    for folder in ("checkpoints", "clip_vision", "elite"):
        files = sorted(p.name for p in (models / folder).glob("*") if p.suffix.lower() in WEIGHT_EXTS)
        if folder == "elite":
            files = [f for f in files if "global" in f.lower()] or files
        if not files:
            return None
        found[folder] = files[0]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path, models: Path, real: dict | None, image: Path | None) -> None:
    custom = base / "custom_nodes"
    shutil.rmtree(custom, ignore_errors=True)
    custom.mkdir(parents=True)
    (custom / "comfyui-elite").symlink_to(REPO, target_is_directory=True)
    (custom / "elite_demo_pack").symlink_to(REPO / "tests" / "comfy_test_pack", target_is_directory=True)
    (base / "input").mkdir(exist_ok=True)
    if image:
        shutil.copy(image, base / "input" / "elite_concept.png")
    else:
        write_concept_image(str(base / "input" / "elite_concept.png"))
    if real is None:
        elite_dir = base / "models" / "elite"
        elite_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = elite_core_module("checkpoint")
        checkpoint.save_mapper_safetensors(tiny_mapper_state_dict(seed=10), str(elite_dir / "demo_random_global_mapper.safetensors"))
    else:
        (base / "extra_model_paths.yaml").write_text(
            "elite_demo:\n"
            f"  base_path: {models.resolve()}\n"
            "  checkpoints: checkpoints\n  clip_vision: clip_vision\n  elite: elite\n"
        )


def build_prompt(real: dict | None, steps: int | None) -> dict:
    prompt = json.loads((REPO / "tests" / "api_workflows" / "elite_global.json").read_text())
    if real is None:
        return with_tiny_models(prompt, "demo_random_global_mapper.safetensors")
    prompt["1"]["inputs"]["ckpt_name"] = real["checkpoints"]
    prompt["2"]["inputs"]["clip_name"] = real["clip_vision"]
    prompt["3"]["inputs"]["mapper_name"] = real["elite"]
    if steps:
        prompt["10"]["inputs"]["steps"] = steps
    return prompt


def run_server_and_prompt(comfy: Path, base: Path, prompt: dict, real: bool) -> Path:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-auto-launch", "--dont-print-server",
           "--database-url", "sqlite:///:memory:"]
    if real:
        cmd += ["--extra-model-paths-config", str(base / "extra_model_paths.yaml")]
    server_log = base / "comfyui.log"
    with open(server_log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=comfy, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ComfyUI did not start; see {server_log}")
            try:
                if requests.get(f"{url}/object_info/ELITEEncoder", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        log.info("ComfyUI is up at %s (log: %s); queueing the ELITE workflow", url, server_log)
        reply = requests.post(f"{url}/prompt", json={"prompt": prompt, "client_id": str(uuid.uuid4())}, timeout=60)
        if reply.status_code != 200:
            raise RuntimeError(f"ComfyUI refused the workflow: {reply.text}")
        prompt_id = reply.json()["prompt_id"]
        while True:
            entry = requests.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
            if entry and entry["status"].get("completed") is not None:
                break
            time.sleep(1)
        if entry["status"]["status_str"] != "success":
            errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
            detail = errors[0]["exception_message"] if errors else entry["status"]
            raise RuntimeError(f"The workflow failed: {detail}")
        (image,) = entry["outputs"]["12"]["images"]
        return base / "output" / image["subfolder"] / image["filename"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("ELITE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui")))
    parser.add_argument("--models", default=os.environ.get("ELITE_DEMO_MODELS", str(REPO / "demo_models")))
    parser.add_argument("--image", help="concept image (object centred); default: a generated red ball")
    parser.add_argument("--steps", type=int, help="sampling steps with real weights (workflow: 50)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")

    models = Path(args.models)
    real = find_weights(models)
    base = REPO / ".cache" / "demo"
    base.mkdir(parents=True, exist_ok=True)
    prepare_base(base, models, real, Path(args.image) if args.image else None)
    if real:
        log.info("using REAL weights from %s: %s", models, real)
    else:
        log.warning(RANDOM_BANNER.format(models=str(models) + "/"))
    try:
        image = run_server_and_prompt(Path(args.comfyui), base, build_prompt(real, args.steps), bool(real))
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    if real:
        log.info("done with REAL weights. Image: %s", image)
    else:
        log.warning("done with RANDOM demo weights: the image is noise. Image: %s", image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
