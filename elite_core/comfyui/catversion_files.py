"""Trained CatVersion adapters in ``models/catversion``: their names, their metadata, writing them
without ever leaving a half-written file, and finding one again by the fingerprint of what made it
(only each file's header is read)."""

from __future__ import annotations

import json
import os
import re

import folder_paths

from ..catversion.prefix import CatVersionPrefix, save_catversion_safetensors
from ..catversion.training import CatVersionRecipe
from ..common import files
from ..common.checks import safe_file_stem
from ..common.loss_curve import curve_summary
from .catversion import MODEL_FOLDER
from .folders import next_numbered_path

FINGERPRINT_KEY = "training_fingerprint"
_STOPPED_EARLY = re.compile(r"_step\d+_of_\d+$")  # a run that stopped before its last step (never reused)


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


def next_adapter_path(filename_prefix: str, suffix: str = "") -> str:
    """``models/catversion/<prefix>_<00001>.safetensors`` with the first free counter: never overwrites."""
    return next_numbered_path(MODEL_FOLDER, check_filename_prefix(filename_prefix), suffix)


def save_trained_adapter(prefix: CatVersionPrefix, filename_prefix: str, recipe: CatVersionRecipe, steps_done: int,
                         num_images: int, fingerprint: str | None = None, losses: list[float] | None = None) -> str:
    """Save into models/catversion; a run that stopped early is named ``<prefix>_<n>_step<done>_of_<planned>``."""
    path = next_adapter_path(filename_prefix, "" if steps_done == recipe.steps else f"_step{steps_done}_of_{recipe.steps}")
    save_adapter_atomically(prefix, path, adapter_metadata(recipe, steps_done, num_images, fingerprint, losses))
    return path


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
        named = bool(filename_prefix) and os.path.basename(stem).startswith(f"{filename_prefix.strip()}_")
        found.append((named, modified, name, path))
    return max(found)[3] if found else None


def stored_curve(metadata: dict[str, str]) -> list[float]:
    try:
        curve = json.loads(metadata.get("loss_curve", "[]"))
        return [float(v) for v in curve] if isinstance(curve, list) else []
    except (ValueError, TypeError):
        return []
