"""`make demo`: run the ELITE example workflow through a real, headless ComfyUI server.

With real weights (an SD1.x checkpoint, CLIP ViT-L/14 vision, ELITE's global mapper and, for the
full method, its local mapper) found in the models folder, the example workflow runs on them.
Otherwise it runs on tiny RANDOM demo weights in the real layouts, says so loudly, and the image is
noise: it proves the plumbing, not the quality.

Models folder: $ELITE_DEMO_MODELS, or ./demo_models, laid out like ComfyUI's models/:
    checkpoints/<SD1.x>.safetensors  clip_vision/<ViT-L-14>.safetensors
    elite/global_mapper.pt           elite/local_mapper.pt (optional: global + local workflow)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ELITE_CACHE", REPO / ".cache"))  # where scripts/bootstrap.sh installs
# elite_test_pack (the tiny RANDOM demo models) from the repository root; appended, so that the
# repository's folders (nodes/ above all) never shadow ComfyUI's modules in a process that imports
# both (the tests import this script).
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
from elite_test_pack.comfy_server import run_prompt, running_server  # noqa: E402
from elite_test_pack.pack_import import elite_core_module  # noqa: E402
from elite_test_pack.tiny_models import tiny_mapper_state_dict  # noqa: E402
from elite_test_pack.workflows import (  # noqa: E402
    api_workflow,
    node_id,
    save_node_id,
    with_tiny_models,
    write_concept_image,
)

log = logging.getLogger("elite.demo")
RANDOM_GLOBAL = "demo_random_global_mapper.safetensors"
RANDOM_LOCAL = "demo_random_local_mapper.safetensors"
WEIGHT_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
RANDOM_BANNER = """
##########################################################################
#  ELITE DEMO ON RANDOM WEIGHTS                                          #
#  No real SD1.x / CLIP ViT-L/14 / ELITE mapper files were found, so     #
#  this demo runs tiny randomly initialised models in the real layouts.  #
#  The image is NOISE: it shows the workflow runs, not what ELITE makes. #
#  Put real files under {models:<48}#
##########################################################################"""


def _weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*") if p.suffix.lower() in WEIGHT_EXTS)


def find_weights(models: Path) -> dict[str, str] | None:
    """File names of the real weights, or None when one of the required ones is missing."""
    elite = _weight_files(models / "elite")
    found = {
        "checkpoints": _weight_files(models / "checkpoints"),
        "clip_vision": _weight_files(models / "clip_vision"),
        "global": [f for f in elite if "global" in f.lower()],
    }
    if not all(found.values()):
        return None
    real = {key: files[0] for key, files in found.items()}
    local = [f for f in elite if "local" in f.lower()]
    if local:
        real["local"] = local[0]
    return real


def prepare_base(base: Path, models: Path, real: dict | None, image: Path | None) -> None:
    custom = base / "custom_nodes"
    shutil.rmtree(custom, ignore_errors=True)
    custom.mkdir(parents=True)
    (custom / "comfyui-elite").symlink_to(REPO, target_is_directory=True)
    (custom / "elite_demo_pack").symlink_to(REPO / "elite_test_pack", target_is_directory=True)
    (base / "input").mkdir(exist_ok=True)
    if image:
        shutil.copy(image, base / "input" / "elite_concept.png")
    else:
        write_concept_image(str(base / "input" / "elite_concept.png"))
    if real is None:
        elite_dir = base / "models" / "elite"
        elite_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = elite_core_module("elite.checkpoint")
        checkpoint.save_mapper_safetensors(tiny_mapper_state_dict(seed=10), str(elite_dir / RANDOM_GLOBAL), kind="global")
        checkpoint.save_mapper_safetensors(tiny_mapper_state_dict(seed=11), str(elite_dir / RANDOM_LOCAL), kind="local")
    else:
        (base / "extra_model_paths.yaml").write_text(
            "elite_demo:\n"
            f"  base_path: {models.resolve()}\n"
            "  checkpoints: checkpoints\n  clip_vision: clip_vision\n  elite: elite\n"
        )


def build_prompt(real: dict | None, steps: int | None, own_image: bool = False) -> dict:
    """The API twin of an example workflow, pointed at the weights found (or the random ones). The
    concept is the workflow's example cat, or with ``own_image`` input/elite_concept.png through
    Load Image (its MASK, the alpha, is 1 on the background: the encoder inverts it)."""
    workflow = "01_elite_global" if real is not None and "local" not in real else "02_elite_global_local"
    prompt = api_workflow(workflow)

    def inputs(class_type: str) -> dict:
        return prompt[node_id(prompt, class_type)]["inputs"]

    if own_image:
        example = node_id(prompt, "ELITEExampleConcept")
        prompt[example] = {"class_type": "LoadImage", "inputs": {"image": "elite_concept.png"}}
        inputs("ELITEEncoder")["invert_mask"] = True
    if real is None:
        return with_tiny_models(prompt, RANDOM_GLOBAL, RANDOM_LOCAL)
    inputs("CheckpointLoaderSimple")["ckpt_name"] = real["checkpoints"]
    inputs("CLIPVisionLoader")["clip_name"] = real["clip_vision"]
    inputs("ELITEGlobalMapperLoader")["mapper_name"] = real["global"]
    if "local" in real:
        inputs("ELITELocalMapperLoader")["mapper_name"] = real["local"]
    if steps:
        inputs("KSampler")["steps"] = steps
    return prompt


def run_demo(comfy: Path, base: Path, prompt: dict, real: bool, cpu: bool) -> Path:
    extra = ["--extra-model-paths-config", str(base / "extra_model_paths.yaml")] if real else []
    server_log = base / "comfyui.log"
    started = time.monotonic()
    with running_server(comfy, base, server_log, extra, cpu=cpu) as url:
        log.info("ComfyUI is up at %s after %.0f s (log: %s); queueing the ELITE workflow",
                 url, time.monotonic() - started, server_log)
        queued = time.monotonic()
        entry = run_prompt(url, prompt)
        log.info("the workflow ran in %.0f s", time.monotonic() - queued)
    (image,) = entry["outputs"][save_node_id(prompt)]["images"]
    return base / "output" / image["subfolder"] / image["filename"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("ELITE_COMFYUI_DIR", str(CACHE / "comfyui")))
    parser.add_argument("--models", default=os.environ.get("ELITE_DEMO_MODELS", str(REPO / "demo_models")))
    parser.add_argument("--image", help="your concept image (object centred, cut-out PNG); default: the example cat")
    parser.add_argument("--steps", type=int, help="sampling steps with real weights (workflow: 50)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")

    models = Path(args.models)
    real = find_weights(models)
    base = CACHE / "demo"
    base.mkdir(parents=True, exist_ok=True)
    prepare_base(base, models, real, Path(args.image) if args.image else None)
    # The tiny random models always run on the CPU; real weights use the GPU when there is one.
    cpu = args.cpu or not real or not torch.cuda.is_available()
    if real:
        log.info("using REAL weights from %s: %s (on the %s)", models, real, "CPU" if cpu else "GPU")
    else:
        log.warning(RANDOM_BANNER.format(models=str(models) + "/"))
        # The server's torch on one thread: the tiny models gain nothing from more, and on a busy machine
        # OpenMP's spinning threads made each of their sampling steps take seconds instead of a fraction.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        image = run_demo(Path(args.comfyui), base, build_prompt(real, args.steps, bool(args.image)), bool(real), cpu)
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
