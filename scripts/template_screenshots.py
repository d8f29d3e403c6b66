"""Screenshots of the shipped templates in the real ComfyUI frontend (headless Chromium): README
pictures in docs/templates/<name>.jpg and template thumbnails in example_workflows/<name>.jpg.

    .cache/venv/bin/python scripts/template_screenshots.py      (after `make test` installed the tools)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COMFY_DIR = Path(os.environ.get("ELITE_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
FRONTEND_MODULES = REPO / ".cache" / "frontend-check" / "node_modules"
log = logging.getLogger("elite.screenshots")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(REPO / "tests"))
    from comfy_test_pack.comfy_server import running_server

    chromium, node = shutil.which("chromium"), shutil.which("node")
    if not (chromium and node and (FRONTEND_MODULES / "playwright-core").is_dir()):
        log.error("needs Debian's chromium, node and playwright-core: run `make test` once first")
        return 2
    pictures = REPO / "docs" / "templates"
    pictures.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p) for p in (REPO / "example_workflows").glob("*.json"))
    with tempfile.TemporaryDirectory() as base:
        shots = Path(base) / "shots"
        shots.mkdir()
        (Path(base) / "custom_nodes").mkdir()
        (Path(base) / "custom_nodes" / "comfyui-elite").symlink_to(REPO)
        with running_server(COMFY_DIR, Path(base), Path(base) / "server.log", timeout=180) as url:
            done = subprocess.run([node, str(REPO / "tests" / "frontend" / "load_workflows.js"), url, chromium, *files],
                                  env={**os.environ, "NODE_PATH": str(FRONTEND_MODULES), "SCREENSHOT_DIR": str(shots)},
                                  capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            log.error("%s", done.stderr[-4000:])
            return 1
        for name in json.loads(done.stdout):
            with Image.open(shots / f"{name}.png") as shot:
                picture = shot.convert("RGB")
            for path, size in ((pictures / f"{name}.jpg", (1600, 900)), (REPO / "example_workflows" / f"{name}.jpg",
                                                                       (640, 360))):
                copy = picture.copy()
                copy.thumbnail(size)
                copy.save(path, quality=85)
            log.info("%s: docs/templates/%s.jpg, example_workflows/%s.jpg", name, name, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
