"""The processes of a run: one (``python -m elite_eval.run``), or several under ``accelerate launch``
(one per GPU, on one machine or several sharing the run folder) that split the missing images
between them. ``accelerate`` is imported only when the run was launched as several processes.
"""

from __future__ import annotations

import os
from datetime import timedelta

# How long a process that has finished its share waits for the slowest one (a collective's timeout).
WAIT = timedelta(hours=24)


class Processes:
    """A run in one process: it makes every image, scores and reports."""

    rank = 0
    count = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, jobs: list) -> list:
        """This process's jobs: the ``rank``-th of every ``count``, in the list's order."""
        return jobs[self.rank::self.count]

    def wait(self) -> None:
        """Return once every process has reached this point (nothing to wait for alone)."""

    def close(self) -> None:
        """Leave the group of processes (nothing to leave alone)."""

    def describe(self) -> str:
        return "one process"


class LaunchedProcesses(Processes):
    """Several processes started by ``accelerate launch`` (or torchrun), joined through accelerate."""

    def __init__(self, state):
        self.state = state
        self.rank = state.process_index
        self.count = state.num_processes

    def wait(self) -> None:
        self.state.wait_for_everyone()

    def close(self) -> None:
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def describe(self) -> str:
        return f"process {self.rank + 1} of {self.count}"


def launched_processes(cpu: bool) -> Processes:
    """The processes this run was started as. Several (``WORLD_SIZE`` > 1, set by ``accelerate launch``)
    are joined with accelerate, which also gives each its own GPU; call before ComfyUI starts, which
    takes the device it finds then."""
    count = os.environ.get("WORLD_SIZE", "1")
    if not count.isdigit() or int(count) <= 1:
        return Processes()
    try:
        from accelerate import PartialState
    except ImportError:
        from .generate import RunError

        raise RunError(f"This run was started as {count} processes (WORLD_SIZE={count}, as accelerate launch or "
                       "torchrun set it), which needs accelerate: pip install -r requirements-eval.txt. "
                       "Or run python -m elite_eval.run alone, as one process.") from None
    return LaunchedProcesses(PartialState(cpu=cpu, timeout=WAIT))
