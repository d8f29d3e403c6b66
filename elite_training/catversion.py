"""Learn a CatVersion concept from the command line, on one GPU or many (``accelerate``).

    accelerate launch -m elite_training.catversion --checkpoint v1-5-pruned-emaonly.safetensors \\
        --images photos/teddybear --class-word teddybear

It runs the training node's implementation (``elite_core.comfyui.catversion_training``) on models
loaded by ComfyUI's own loader, so the adapter it saves is the one CatVersion Apply runs. With N
processes each takes ``--batch-size`` images per step (the global batch is N x that); the
learning rate defaults to the paper's 0.005 x the global batch. Every process draws the same
global batch from the seed, so N processes x batch b train as 1 process x batch N*b.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import unicodedata

import numpy as np
import torch

from elite_core.comfyui.runtime import SetupError, find_comfyui, load_sd1_checkpoint, start_comfyui
from elite_core.common.checks import MIN_IMAGE_SIDE, ELITEInputError, real_number, seed_number, whole_number
from elite_core.common.files import IMAGE_EXTENSIONS, open_oriented

log = logging.getLogger("elite.catversion.train")


def parse_args(argv=None) -> argparse.Namespace:
    from elite_core.catversion.training import BASE_LEARNING_RATE, CatVersionRecipe

    recipe = CatVersionRecipe()
    p = argparse.ArgumentParser(prog="python -m elite_training.catversion", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="SD1.x checkpoint: a path, or a name in ComfyUI's models/checkpoints")
    p.add_argument("--images", required=True, help="folder of 3-10 photos of the concept (every image file in it)")
    p.add_argument("--class-word", default="", help="training caption: the concept's class word (empty = the released code)")
    p.add_argument("--output", default=None, help="adapter .safetensors to write (default: ComfyUI's "
                   "models/catversion/<class word>_<counter>.safetensors)")
    p.add_argument("--comfyui", default=None, help="ComfyUI folder (default: $COMFYUI_DIR, or the ComfyUI this pack is in)")
    p.add_argument("--steps", type=whole_number(1), default=recipe.steps)
    p.add_argument("--batch-size", type=whole_number(1), default=recipe.batch_size, help="images per step and process")
    p.add_argument("--learning-rate", type=real_number(0.0, above_low=True), default=None,
                   help=f"AdamW learning rate (default: {BASE_LEARNING_RATE} x global batch, as the paper's --scale_lr)")
    p.add_argument("--resolution", type=whole_number(64, multiple_of=64), default=recipe.resolution)
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flip (the paper flips with p = 0.5)")
    p.add_argument("--seed", type=seed_number, default=recipe.seed)
    p.add_argument("--cpu", action="store_true", help="train on the CPU (slow; for tests)")
    return p.parse_args(argv)


def load_image_folder(folder: str) -> list[torch.Tensor]:
    """Every image file in ``folder`` as a ComfyUI IMAGE (1, H, W, 3), in name order."""
    if not os.path.isdir(folder):
        raise SetupError(f"--images {folder!r} is not a folder. Put 3-10 photos of the concept in one folder.")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise SetupError(f"--images {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                         "Put 3-10 photos of the concept in it.")
    images = []
    for name in names:
        try:
            rgb = open_oriented(os.path.join(folder, name)).convert("RGB")  # as ComfyUI's Load Image
        except (OSError, SyntaxError) as exc:
            raise SetupError(f"'{name}' in {folder!r} cannot be read as an image ({exc}).") from None
        if min(rgb.size) < MIN_IMAGE_SIDE:  # the nodes' rule (common.checks.check_image)
            raise SetupError(f"'{name}' in {folder!r} is {rgb.width}x{rgb.height} pixels: there is no picture of the "
                             f"concept in it. Use photos of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (512x512 or "
                             "larger works best).")
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None])
    return images


def file_stem(class_word: str) -> str:
    """The saved adapter's name from the class word: the class word is caption text (any characters),
    the name a file name, so everything but letters and digits (of any script), '.', '_' and '-' becomes '_'."""
    stem = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", class_word.strip())).strip("._-")
    return re.sub(r"\.{2,}", ".", stem)[:80] or "catversion_concept"


def recipe_from_args(args: argparse.Namespace, num_processes: int):
    from elite_core.catversion.training import BASE_LEARNING_RATE, CatVersionRecipe

    global_batch = args.batch_size * num_processes
    lr = args.learning_rate if args.learning_rate is not None else BASE_LEARNING_RATE * global_batch
    return CatVersionRecipe(steps=args.steps, batch_size=args.batch_size, learning_rate=lr, resolution=args.resolution,
                            flip_probability=0.0 if args.no_flip else 0.5, seed=args.seed, caption=args.class_word)


def train(accelerator, model, clip, vae, images, recipe, output: str | None, filename_prefix: str):
    """Train on every process; the main process saves the adapter (and, on Ctrl-C, the prefix so far)."""
    from elite_core.comfyui import catversion_files as adapter_files
    from elite_core.comfyui import catversion_training as training

    from .accelerate_run import AccelerateRun

    def on_step(report):
        if accelerator.is_main_process and (report.step % 50 == 0 or report.step == report.steps):
            log.info("step %d/%d  loss %.5f", report.step, report.steps, report.loss)

    def save(prefix, steps_done):
        """Save, never losing the prefix: a save that fails keeps it under a safe name (and says why)."""
        path, failure = adapter_files.keep_trained_adapter(
            prefix, filename_prefix, recipe, steps_done, len(images),
            output=output if output and steps_done == recipe.steps else None)
        if failure is None:
            log.info("saved %s", path)
            return path, None
        wanted = output if output and steps_done == recipe.steps else f"models/catversion/{filename_prefix}_<n>.safetensors"
        return path, (f"{wanted} could not be written ({adapter_files.failure_reason(failure)}); the adapter of "
                      f"{steps_done} step(s) is kept as {path}. Rename or move it where you want it.")

    def on_abort(report, exc):
        if accelerator.is_main_process:
            log.warning("training stopped after step %d of %d (%s); keeping that step's prefix", report.step,
                        report.steps, type(exc).__name__)
            _, problem = save(report.prefix(), report.step)
            if problem:
                log.error("%s", problem)

    prefix, losses = training.train_concept(model, clip, vae, images, recipe, AccelerateRun(accelerator), on_step,
                                            name=filename_prefix, on_abort=on_abort)
    accelerator.wait_for_everyone()
    path, problem = save(prefix, recipe.steps) if accelerator.is_main_process else (None, None)
    accelerator.wait_for_everyone()  # every process passes this before the main one reports a failed save
    if problem:
        raise adapter_files.AdapterSaveError(f"Training finished, but {problem}")
    return prefix, losses, path


def check_output(output: str | None) -> None:
    """Refuse an ``--output`` that cannot be written, before anything is loaded or trained: a
    folder, a missing or read-only folder, a name too long for the file system."""
    if not output:
        return
    from elite_core.common.files import check_name_length

    path = os.path.abspath(output)
    folder, name = os.path.split(path)
    if os.path.isdir(path):
        raise SetupError(f"--output {output!r} is a folder: give the adapter file to write, e.g. "
                         f"{os.path.join(output, 'my_concept.safetensors')}.")
    if not os.path.isdir(folder):
        raise SetupError(f"--output {output!r}: the folder {folder} does not exist. Create it first, or choose "
                         "another --output.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SetupError(f"--output {output!r}: the folder {folder} cannot be written to (no permission). Choose "
                         "another --output.")
    check_name_length(folder, name, name, "--output file name")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)  # --help works without the training extras
    try:
        from accelerate import Accelerator
    except ImportError:
        log.error("The command-line trainer needs Hugging Face accelerate: pip install -r requirements-train.txt")
        return 2
    try:
        check_output(args.output)  # before anything is loaded: a run of hours must be able to save its result
        comfy_dir = find_comfyui(args.comfyui)
        images = load_image_folder(args.images)
        accelerator = Accelerator(cpu=args.cpu)
        start_comfyui(comfy_dir, cpu=accelerator.device.type == "cpu")
        from elite_core.comfyui.catversion_files import AdapterSaveError, check_adapter_name_length, check_filename_prefix

        name = check_filename_prefix(file_stem(args.class_word))
        recipe = recipe_from_args(args, accelerator.num_processes).checked()
        if not args.output:
            check_adapter_name_length(name, recipe.steps)
        model, clip, vae = load_sd1_checkpoint(args.checkpoint)
        try:
            train(accelerator, model, clip, vae, images, recipe, args.output, name)
        except AdapterSaveError as exc:
            log.error("%s", exc)
            return 1
    except (SetupError, ELITEInputError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
