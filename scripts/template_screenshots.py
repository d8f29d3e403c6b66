"""Every picture of the shipped templates: the template browser's thumbnails in
example_workflows/<name>.jpg (composed cards, scripts/template_cards.py), and from the real ComfyUI
frontend in headless Chromium, each graph in docs/templates/<name>.jpg (the README's pictures) and the
template browser open on the pack's category, docs/templates/template_browser.jpg. The graphs are shot
on the frontend ComfyUI pins, the browser on the newest one under .cache/frontend-newest when it is
there (the one most cards will be seen in).
With --run, the ELITE Prepare Concept template is also queued on tiny RANDOM demo weights and shot
after its run, previews included: docs/templates/03_elite_prepare_from_photo_after_run.jpg.

    .cache/venv/bin/python scripts/template_screenshots.py [--run] [--cards-only]
    (after `make test` installed Chromium and playwright-core; --cards-only needs neither)
"""

from __future__ import annotations

import argparse
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
CACHE = Path(os.environ.get("ELITE_CACHE", REPO / ".cache"))  # where scripts/bootstrap.sh installs
COMFY_DIR = Path(os.environ.get("ELITE_COMFYUI_DIR", CACHE / "comfyui"))
FRONTEND_MODULES = CACHE / "frontend-check" / "node_modules"
NEWEST_FRONTEND = CACHE / "frontend-newest" / "comfyui_frontend_package" / "static"
PACK_FOLDER = "comfyui-elite"  # the pack's folder in custom_nodes/: the template browser's category
log = logging.getLogger("elite.screenshots")
RUN_TEMPLATE = "03_elite_prepare_from_photo"


def _shoot(url: str, chromium: str, node: str, files: list[str], shots: Path, swaps: Path | None = None) -> dict | None:
    env = {**os.environ, "NODE_PATH": str(FRONTEND_MODULES), "SCREENSHOT_DIR": str(shots)}
    if swaps is not None:
        env["QUEUE_PROMPTS"] = str(swaps)
    done = subprocess.run([node, str(REPO / "tests" / "frontend" / "load_workflows.js"), url, chromium, *files],
                          env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        log.error("%s", done.stderr[-4000:])
        return None
    return json.loads(done.stdout)


def _save(shot: Path, pictures: list[tuple[Path, tuple[int, int]]]) -> None:
    with Image.open(shot) as image:
        picture = image.convert("RGB")
    for path, size in pictures:
        copy = picture.copy()
        copy.thumbnail(size)
        copy.save(path, quality=85)


def _template_browser(url: str, chromium: str, node: str, base: Path, pictures: Path) -> bool:
    """The template browser open on the pack's category, the dialog alone."""
    shot = base / "template_browser.png"
    env = {**os.environ, "NODE_PATH": str(FRONTEND_MODULES)}
    done = subprocess.run([node, str(REPO / "scripts" / "template_browser.js"), url, chromium, PACK_FOLDER, str(shot)],
                          env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        log.error("%s", done.stderr[-4000:])
        return False
    _save(shot, [(pictures / "template_browser.jpg", (1600, 1000))])
    log.info("the template browser (cards %s): docs/templates/template_browser.jpg", json.loads(done.stdout)["titles"])
    return True


def _after_run(url: str, chromium: str, node: str, base: Path, pictures: Path) -> bool:
    """The Prepare Concept template queued through the frontend on tiny random weights (the demo's),
    then shot with its previews: the exact CLIP input, the token grid and the attention overlay."""
    from demo import RANDOM_GLOBAL, RANDOM_LOCAL

    from elite_test_pack.workflows import tiny_prompt

    prompt = tiny_prompt(RUN_TEMPLATE, RANDOM_GLOBAL, RANDOM_LOCAL, size=128, steps=4)
    swaps = base / "swaps.json"
    swaps.write_text(json.dumps({RUN_TEMPLATE: prompt}))
    shots = base / "shots-run"
    shots.mkdir()
    report = _shoot(url, chromium, node, [str(REPO / "example_workflows" / f"{RUN_TEMPLATE}.json")], shots, swaps)
    if report is None:
        return False
    _save(shots / f"{RUN_TEMPLATE}.png", [(pictures / f"{RUN_TEMPLATE}_after_run.jpg", (1600, 900))])
    log.info("%s after a run on RANDOM weights: docs/templates/%s_after_run.jpg", RUN_TEMPLATE, RUN_TEMPLATE)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true",
                        help=f"also shoot {RUN_TEMPLATE} after a run on tiny random demo weights")
    parser.add_argument("--cards-only", action="store_true", help="only the thumbnails (no browser needed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(REPO / "scripts"))  # template_cards.py; demo.py, whose random weights --run uses
    from template_cards import FontMissing, write_cards

    try:
        for path in write_cards():
            log.info("thumbnail: %s", path.relative_to(REPO))
    except (FontMissing, KeyError) as error:
        log.error("%s", error.args[0])
        return 2
    if args.cards_only:
        return 0
    if str(REPO) not in sys.path:  # elite_test_pack from the repository root
        sys.path.append(str(REPO))
    from elite_test_pack.comfy_server import running_server

    chromium, node = shutil.which("chromium"), shutil.which("node")
    if not (chromium and node and (FRONTEND_MODULES / "playwright-core").is_dir()):
        log.error("needs Debian's chromium, node and playwright-core: run `make test` once first")
        return 2
    pictures = REPO / "docs" / "templates"
    pictures.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p) for p in (REPO / "example_workflows").glob("*.json"))
    newest = []
    if (NEWEST_FRONTEND / "index.html").is_file():
        newest = ["--front-end-root", str(NEWEST_FRONTEND)]
    else:
        log.warning("no newest frontend at %s: the template browser is shot on the one ComfyUI pins", NEWEST_FRONTEND)
    with tempfile.TemporaryDirectory() as base:
        shots = Path(base) / "shots"
        shots.mkdir()
        (Path(base) / "custom_nodes").mkdir()
        (Path(base) / "custom_nodes" / PACK_FOLDER).symlink_to(REPO)
        with running_server(COMFY_DIR, Path(base), Path(base) / "server.log", timeout=180) as url:
            report = _shoot(url, chromium, node, files, shots)
        if report is None:
            return 1
        with running_server(COMFY_DIR, Path(base), Path(base) / "server-newest.log", extra_args=newest,
                            timeout=180) as url:
            if not _template_browser(url, chromium, node, Path(base), pictures):
                return 1
        for name in report:
            _save(shots / f"{name}.png", [(pictures / f"{name}.jpg", (1600, 900))])
            log.info("%s: docs/templates/%s.jpg", name, name)
        if args.run:
            from demo import prepare_base

            run_base = Path(base) / "run"
            prepare_base(run_base, run_base / "models", None, None)  # the demo's random weights
            with running_server(COMFY_DIR, run_base, run_base / "server.log", timeout=180) as url:
                if not _after_run(url, chromium, node, run_base, pictures):
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
