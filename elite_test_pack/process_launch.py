"""Command lines of the tests' multi-process runs (trainers, evaluation) on the CPU: several
processes under ``accelerate launch`` (gloo), one process run directly, which accelerate supports as
well and which saves the launcher's start-up."""

from __future__ import annotations

import os
import sys

# No GPU even where there is one (gloo on the CPU, the same numbers everywhere) and nothing downloaded.
LAUNCH_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


def launcher(processes: int) -> list[str]:
    """What goes before the script (or ``-m module``) and its arguments: ``accelerate launch`` with
    one CPU thread per process for several, this Python for one."""
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--num_cpu_threads_per_process", "1"]
