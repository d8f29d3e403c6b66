"""Trained CatVersion adapters in ``models/catversion``: their names, their metadata, writing them
without ever leaving a half-written file, and finding one again by the fingerprint of what made it
(only each file's header is read)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
import time

import folder_paths

from ..catversion.prefix import CatVersionPrefix, save_catversion_safetensors
from ..catversion.training import CatVersionRecipe
from ..common import files
from ..common.checks import safe_file_stem
from ..common.loss_curve import curve_summary
from .catversion import MODEL_FOLDER
from .folders import check_numbered_name_length, next_numbered_path_in, save_folder, save_numbered

log = logging.getLogger("elite.catversion")

FINGERPRINT_KEY = "training_fingerprint"
_STOPPED_EARLY = re.compile(r"_step\d+_of_\d+$")  # a run that stopped before its last step (never reused)
MOST_STEPS = 100000  # the training node's largest ``steps``: the longest name when the steps are not known yet
FALLBACK_STEM = "catversion"  # a trained adapter whose own name could not be written: catversion_<time>_<n>


class AdapterSaveError(RuntimeError):
    """The trained adapter could not be written under its name; the message says where it was kept."""


def adapter_metadata(recipe: CatVersionRecipe, steps_done: int, num_images: int, fingerprint: str | None = None,
                     losses: list[float] | None = None) -> dict[str, str]:
    """The adapter file's metadata: the recipe, and (from the node) what it was made from and its loss."""
    metadata = {
        "trainer": "elite-personalize CatVersion training (reference recipe)",
        "caption": recipe.caption, "steps": str(steps_done), "planned_steps": str(recipe.steps),
        "batch_size": str(recipe.batch_size), "learning_rate": repr(recipe.learning_rate),
        "resolution": str(recipe.resolution), "flip_probability": repr(recipe.flip_probability),
        "seed": str(recipe.seed), "images": str(num_images),
    }
    if fingerprint:
        metadata[FINGERPRINT_KEY] = fingerprint
    if losses:
        metadata.update(loss_first=repr(losses[0]), loss_last=repr(losses[-1]), loss_curve=json.dumps(curve_summary(losses)))
    return metadata


def save_adapter_atomically(prefix: CatVersionPrefix, path: str, metadata: dict[str, str]) -> None:
    """Write the adapter to a temporary name beside ``path`` and rename it into place."""
    files.write_atomically(path, lambda partial: save_catversion_safetensors(prefix, partial, metadata))


def check_filename_prefix(filename_prefix: str) -> str:
    """The adapter's file name (before its counter), as every file system takes it (:func:`safe_file_stem`)."""
    return safe_file_stem(filename_prefix, "The adapter name", "my_teddybear")


def stopped_early_suffix(steps_done: int, planned_steps: int) -> str:
    return "" if steps_done == planned_steps else f"_step{steps_done}_of_{planned_steps}"


def check_adapter_name_length(filename_prefix: str, planned_steps: int | None = None) -> None:
    """Refuse a name whose adapter file would be too long for models/catversion's file system, the
    longest one counted: a run stopped after ``planned_steps - 1`` steps, its counter, and the
    temporary name of the atomic write (``planned_steps`` None: the node's largest)."""
    steps = planned_steps if isinstance(planned_steps, int) and planned_steps > 0 else MOST_STEPS
    check_numbered_name_length(MODEL_FOLDER, (filename_prefix or "").strip(), "adapter name",
                               stopped_early_suffix(steps - 1, steps))


def save_trained_adapter(prefix: CatVersionPrefix, filename_prefix: str, recipe: CatVersionRecipe, steps_done: int,
                         num_images: int, fingerprint: str | None = None, losses: list[float] | None = None) -> str:
    """Save as ``models/catversion/<prefix>_<n>.safetensors`` with the first free counter (never
    overwrites); a run that stopped early is named ``<prefix>_<n>_step<done>_of_<planned>``."""
    metadata = adapter_metadata(recipe, steps_done, num_images, fingerprint, losses)
    return save_numbered(MODEL_FOLDER, check_filename_prefix(filename_prefix),
                         lambda partial: save_catversion_safetensors(prefix, partial, metadata),
                         stopped_early_suffix(steps_done, recipe.steps))


def failure_reason(exc: BaseException) -> str:
    """Why a save failed, in words (the system's message for a full disk, a name too long, no permission)."""
    code = getattr(exc, "errno", None)
    if code == errno.ENAMETOOLONG or "os error 36" in str(exc) or "name too long" in str(exc).lower():
        return "the file name is too long for the file system"
    if code in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc):
        return "the disk is full"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "os error 13" in str(exc):
        return "no permission to write there"
    return f"{type(exc).__name__}: {exc}"


def keep_trained_adapter(prefix: CatVersionPrefix, filename_prefix: str, recipe: CatVersionRecipe, steps_done: int,
                         num_images: int, fingerprint: str | None = None, losses: list[float] | None = None,
                         output: str | None = None) -> tuple[str, Exception | None]:
    """Save a trained prefix so that a failing save never loses it: as :func:`save_trained_adapter`
    does (or to ``output``, the command line's own path), and when that fails (a name too long for
    the file system, a full disk, no permission, ...) under a safe name,
    ``catversion_<date>-<time>_<n>.safetensors``, in models/catversion, else in the system's temporary
    folder. Returns the path written and the first save's error (None when it worked); raises that
    error only when no place took the file."""
    metadata = adapter_metadata(recipe, steps_done, num_images, fingerprint, losses)
    try:
        if output:
            save_adapter_atomically(prefix, output, metadata)
            return output, None
        return save_trained_adapter(prefix, filename_prefix, recipe, steps_done, num_images, fingerprint, losses), None
    except Exception as exc:  # whatever stopped the save, the adapter is kept below
        failure = exc
    log.error("CatVersion: the adapter %r could not be saved (%s); keeping it under a safe name", filename_prefix,
              failure_reason(failure))
    stem = time.strftime(f"{FALLBACK_STEM}_%Y%m%d-%H%M%S")
    for where in _fallback_folders():
        try:
            path = next_numbered_path_in(where, stem, stopped_early_suffix(steps_done, recipe.steps))
            save_adapter_atomically(prefix, path, metadata)
        except Exception as exc:  # try the next place
            log.error("CatVersion: could not keep the adapter in %s either (%s)", where, failure_reason(exc))
            continue
        log.warning("CatVersion: the trained adapter is kept as %s", path)
        return path, failure
    raise failure


def kept_elsewhere_message(filename_prefix: str, path: str, failure: BaseException, steps_done: int) -> str:
    """What the user reads when the adapter was kept under a safe name instead of its own."""
    in_models = os.path.dirname(os.path.abspath(path)) == os.path.abspath(save_folder(MODEL_FOLDER))
    where = ("press Run again with the same photos and settings to load it, or pick it in CatVersion Adapter Loader "
             "(rename it as you like)" if in_models else
             "move it into models/catversion/ and pick it in CatVersion Adapter Loader")
    return (f"CatVersion training finished {steps_done} step(s), but the adapter could not be saved under the name "
            f"{(filename_prefix or '')[:60]!r} in models/catversion ({failure_reason(failure)}). Nothing is lost: "
            f"the trained adapter is kept as {path}; {where}.")


def _fallback_folders() -> list[str]:
    try:
        folders = [save_folder(MODEL_FOLDER)]
    except Exception:  # the folder is not registered (a bare ComfyUI): the temporary folder remains
        folders = []
    return folders + [tempfile.gettempdir()]


def find_trained_adapter(fingerprint: str, filename_prefix: str | None = None) -> str | None:
    """The path of a complete adapter in models/catversion whose metadata carries ``fingerprint``, or
    None. Only each file's header is read. A run that stopped early (``_stepN_of_M``, or fewer steps
    done than planned) never counts; unreadable files are passed over. Of several, one named with
    ``filename_prefix`` comes first, then the newest."""
    found = []
    for name in folder_paths.get_filename_list(MODEL_FOLDER):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in files.SAFETENSORS_EXTENSIONS or _STOPPED_EARLY.search(stem):
            continue
        path = folder_paths.get_full_path(MODEL_FOLDER, name)
        try:
            metadata = files.safetensors_metadata(path, MODEL_FOLDER)
            modified = os.path.getmtime(path)
        except (files.TensorFileError, OSError):
            continue
        if metadata.get(FINGERPRINT_KEY) != fingerprint or metadata.get("steps") != metadata.get("planned_steps"):
            continue
        named = bool(filename_prefix) and re.fullmatch(rf"{re.escape(filename_prefix.strip())}_\d{{5,}}",
                                                       os.path.basename(stem)) is not None
        found.append((named, modified, name, path))
    return max(found)[3] if found else None


def stored_curve(metadata: dict[str, str]) -> list[float]:
    try:
        curve = json.loads(metadata.get("loss_curve", "[]"))
        return [float(v) for v in curve] if isinstance(curve, list) else []
    except (ValueError, TypeError):
        return []
