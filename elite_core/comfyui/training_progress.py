"""The training node's progress in the browser: the step and the loss as the node's text, a loss
curve as the progress bar's preview, a loss line in the log now and then, ComfyUI's interrupt, and
the prefix of the last completed step saved under its own name when the run stops early."""

from __future__ import annotations

import logging
import os
import time

import comfy.model_management
import comfy.utils

from ..catversion.training import CatVersionRecipe, StepReport
from ..common.loss_curve import loss_curve_image
from .catversion_files import failure_reason, keep_trained_adapter

log = logging.getLogger("elite.catversion")

def show_text(text: str, node_id: str | None) -> None:
    """``text`` on the node in the browser (the server's progress text), where the running ComfyUI
    has a server that sends it; in-process runs and the command line have none."""
    if node_id is None:
        return
    try:
        from server import PromptServer  # imported here: the command line runs ComfyUI without its server
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    send = getattr(server, "send_progress_text", None)
    if send is not None:
        send(text, node_id, getattr(server, "client_id", None))


def step_text(step: int, steps: int, losses: list[float], window: int = 50) -> str:
    recent = losses[-window:]
    mean = sum(recent) / len(recent)
    return f"step {step}/{steps}  loss {losses[-1]:.4f}  (mean of the last {len(recent)}: {mean:.4f})"


class ComfyProgress:
    """``on_step``/``on_abort`` for the training node: the progress bar with a loss curve as its
    preview and the step and loss as the node's text (both at most every ``show_every_s`` seconds,
    and at the first and last step), a loss line in the log now and then, ComfyUI's interrupt, and
    the prefix of the last completed step saved under its own name when the run stops early.
    ``note`` (e.g. what the training does with a CLIP Set Last Layer cut) stays under the step's text."""

    def __init__(self, filename_prefix: str, recipe: CatVersionRecipe, num_images: int, log_every: int = 50,
                 node_id: str | None = None, fingerprint: str | None = None, show_every_s: float = 1.0,
                 note: str | None = None):
        self.bar = comfy.utils.ProgressBar(recipe.steps, node_id=node_id)
        self.filename_prefix, self.recipe, self.num_images, self.log_every = filename_prefix, recipe, num_images, log_every
        self.node_id, self.fingerprint, self.show_every_s, self.note = node_id, fingerprint, show_every_s, note
        self.losses: list[float] = []
        self._shown_at: float | None = None

    def on_step(self, report: StepReport) -> None:
        self.losses.append(report.loss)
        now = time.monotonic()
        if report.step == 1 or report.step == report.steps or now - self._shown_at >= self.show_every_s:
            self._shown_at = now
            text = step_text(report.step, report.steps, self.losses)
            curve = loss_curve_image(self.losses, report.steps, f"step {report.step}/{report.steps}")
            self.bar.update_absolute(report.step, report.steps, ("PNG", curve, None))
            show_text(text if not self.note else f"{text}\n{self.note}", self.node_id)
        else:
            self.bar.update_absolute(report.step, report.steps)
        if report.step % self.log_every == 0 or report.step == report.steps:
            log.info("CatVersion: step %d/%d, loss %.5f", report.step, report.steps, report.loss)
        comfy.model_management.throw_exception_if_processing_interrupted()

    def on_abort(self, report: StepReport, exc: BaseException) -> None:
        path, failure = keep_trained_adapter(report.prefix(), self.filename_prefix, self.recipe, report.step,
                                             self.num_images, self.fingerprint, self.losses[:report.step])
        why = "interrupted" if isinstance(exc, (comfy.model_management.InterruptProcessingException, KeyboardInterrupt)) \
            else f"stopped by an error ({type(exc).__name__})"
        shown = os.path.basename(path) if failure is None else \
            f"{path} (its own name could not be written: {failure_reason(failure)})"
        log.warning("CatVersion: training %s after step %d of %d; the prefix of that step is saved as %s", why,
                    report.step, report.steps, shown)
        show_text(f"Training {why} after step {report.step} of {report.steps}; that step's prefix is saved as "
                  f"{shown}.", self.node_id)
