"""The ELITE trainer's files: the trained mapper (safetensors for the loader nodes, optionally the
official ``.pt`` layout), the global mapper the local stage starts from, and the checkpoint a run
resumes from (the same one on every process)."""

from __future__ import annotations

import json
import os
import re
import shutil

import torch

from elite_core.common.files import write_atomically
from elite_core.elite.checkpoint import MapperFormatError, load_mapper_state_dict, save_mapper_safetensors
from elite_core.elite.mappers import GlobalMapper, MapperWidths, build_mapper
from elite_core.elite.objectives import GlobalStage

from .data.objects import DataError


def trained_mapper(stage) -> torch.nn.Module:
    return stage.mapper if isinstance(stage, GlobalStage) else stage.local_mapper


def save_mapper(accelerator, stage, path: str, step: int, config) -> None:
    """The trained mapper as a safetensors file the loader nodes read (kind, stage, step and base model
    in its metadata) and, with ``--export-pt``, in the official ``.pt`` layout beside it."""
    state = {k: v.float().contiguous() for k, v in trained_mapper(accelerator.unwrap_model(stage)).state_dict().items()}
    metadata = {"stage": config.stage, "step": str(step), "base_model": os.path.basename(os.path.normpath(config.pretrained)),
                "trainer": "elite-personalize elite_training.elite"}
    write_atomically(path, lambda partial: save_mapper_safetensors(state, partial, kind=config.stage, metadata=metadata))
    if config.export_pt:
        write_atomically(official_pt_path(path, config.stage, step if path.endswith(f"{step:06d}.safetensors") else None),
                         lambda partial: torch.save(state, partial))


def official_pt_path(path: str, stage: str, step: int | None) -> str:
    """The reference's file names: mapper[_<step>].pt (global), local_mapper[_<step>].pt (local)."""
    name = "mapper" if stage == "global" else "local_mapper"
    return os.path.join(os.path.dirname(path), f"{name}_{step:06d}.pt" if step is not None else f"{name}.pt")


def load_global_mapper(path: str, widths: MapperWidths) -> GlobalMapper:
    """The trained global mapper (MLPs and K/V) the local stage starts from; it must fit the base model."""
    try:
        state, found = load_mapper_state_dict(path, kind="global")
    except (MapperFormatError, OSError) as exc:
        raise DataError(f"--global-mapper: {exc}") from None
    if found != widths:
        raise DataError(f"--global-mapper {path!r} has widths {found}, but the base models need {widths}: train the "
                        "global stage on the same --pretrained and --image-encoder first.")
    return build_mapper(GlobalMapper, state, widths).float()


STEP_FILE = "elite_step.json"  # written last: a checkpoint folder without it is unfinished
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(accelerator, folder: str, step: int, stage: str) -> None:
    """The run's state in ``folder``, written under ``<folder>.partial`` and renamed when complete: a
    full disk or a kill leaves no folder that looks like a checkpoint (the partial one is removed)."""
    partial = folder + ".partial"
    try:
        accelerator.save_state(partial)
        if accelerator.is_main_process:
            with open(os.path.join(partial, STEP_FILE), "w") as f:
                json.dump({"step": step, "stage": stage}, f)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if os.path.isdir(folder):
                shutil.rmtree(folder)
            os.replace(partial, folder)
    finally:
        if accelerator.is_main_process and os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)


def load_checkpoint(accelerator, folder: str, stage: str) -> None:
    """Resume from ``folder``: refused by name when it is the other stage's (or another model's)."""
    with open(os.path.join(folder, STEP_FILE)) as f:
        saved = json.load(f).get("stage")
    if saved is not None and saved != stage:
        raise DataError(f"--resume: {folder!r} is a checkpoint of the {saved} stage, and this run trains the {stage} "
                        f"stage. Resume a {stage}-stage checkpoint, or start the {stage} stage without --resume"
                        + (" (from --global-mapper, the global stage's mapper file)." if stage == "local" else "."))
    try:
        accelerator.load_state(folder)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        raise DataError(f"--resume: {folder!r} does not fit this run: its weights are not the {stage} stage's for "
                        "these base models (another stage's checkpoint, or a run on other --pretrained/--image-encoder "
                        "models). Resume a checkpoint of this same training.") from None


def find_resume(config) -> tuple[str | None, int]:
    """The checkpoint folder to resume from (None: start afresh) and its step."""
    if not config.resume:
        return None, 0
    if config.resume == "latest":
        out = config.output_dir
        # a checkpoint is complete once its elite_step.json is written
        found = [d for d in os.listdir(out) if CHECKPOINT_NAME.match(d)
                 and os.path.isfile(os.path.join(out, d, STEP_FILE))] if os.path.isdir(out) else []
        if not found:
            return None, 0
        folder = os.path.join(out, max(found, key=lambda d: int(d.split("-")[1])))
    else:
        folder = config.resume
    try:
        with open(os.path.join(folder, STEP_FILE)) as f:
            return folder, int(json.load(f)["step"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"--resume {config.resume!r}: {folder!r} is not a finished checkpoint (its elite_step.json "
                        f"cannot be read: {exc}). Pass a checkpoint-<step> folder of a run, or 'latest'.") from None


def agree_on_start(accelerator, start: int) -> None:
    """Every process must resume from the same step; they would not where --output-dir is not on storage
    all machines share (only the main process writes a checkpoint's model and step)."""
    starts = [int(s) for s in accelerator.gather(torch.tensor([start], device=accelerator.device)).tolist()]
    if len(set(starts)) > 1:
        raise DataError(f"The processes found different checkpoints to resume from (steps {starts}, by process): "
                        "put --output-dir on storage that every machine shares, so that all of them read the "
                        "checkpoint the main process wrote.")
