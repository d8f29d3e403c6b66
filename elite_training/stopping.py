"""A clean stop for multi-process training: the first Ctrl-C or SIGTERM becomes a request that every
process honours together at the end of the step in progress (the trainer shares the flag in the
step's one collective), so no process is cut off inside a collective operation."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger("elite.train")


class TrainingStopped(Exception):
    """Ctrl-C or SIGTERM: every process stopped after the same step, which a checkpoint holds."""

    def __init__(self, step: int):
        super().__init__(f"stopped after step {step}")
        self.step = step


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request, honoured at the end of the step by every
    process together (no process is cut off inside a collective); later signals are logged."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            log.warning("already stopping: the step in progress finishes and is saved")
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        names = [signal.SIGINT, signal.SIGTERM]
        previous = {sig: signal.getsignal(sig) for sig in names}
        if threading.current_thread() is threading.main_thread():
            for sig in names:
                signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
