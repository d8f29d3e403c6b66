"""The ELITE trainer's command line (``python -m elite_training.elite``) run for the tests: on the CPU,
at 64 px, one process directly or several under ``accelerate launch``, and its log read back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .pack_import import REPO_ROOT
from .process_launch import LAUNCH_ENV, launcher


def launch_command(output: Path, base_model: Path, data: Path, *extra: str, processes: int = 1) -> list[str]:
    """Several processes go through `accelerate launch` (gloo on the CPU), one runs the module directly."""
    return [*launcher(processes), "-m", "elite_training.elite", "--pretrained", str(base_model),
            "--image-encoder", str(base_model / "image_encoder"), "--data", str(data), "--output-dir", str(output),
            "--resolution", "64", "--gradient-accumulation", "1", "--learning-rate", "1e-3", "--cpu",
            "--validation-images", "0", *extra]


def launch(tmp_path: Path, base_model: Path, data: Path, out: str, *extra: str, processes: int = 1) -> Path:
    """Train into ``tmp_path / out`` (the trainer must succeed); return that folder."""
    output = tmp_path / out
    command = launch_command(output, base_model, data, *extra, processes=processes)
    done = subprocess.run(command, cwd=REPO_ROOT, env=LAUNCH_ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return output


def log_column(output: Path, name: str) -> list[float]:
    """One value of each step of the run's train_log.jsonl."""
    return [json.loads(line)[name] for line in (output / "train_log.jsonl").read_text().splitlines()]


def losses(output: Path) -> list[float]:
    return log_column(output, "loss")
