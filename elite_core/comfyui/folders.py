"""The pack's model folders in ComfyUI: registering ``models/<folder>``, the message a loader gives
for a file it cannot find, and numbered save paths that never overwrite. Shared by ELITE's mappers
and concepts, CatVersion's adapters and the evaluation's encoders."""

from __future__ import annotations

import os
import re

import folder_paths

from ..common import files


def register_folder(folder: str, extensions) -> None:
    """Register ``models/<folder>`` (plus any ``<folder>:`` paths from extra_model_paths.yaml),
    listing only files with ``extensions``, and create it when it is missing, so that an artist finds
    the folder the README and the messages name (a read-only install is left as it is)."""
    default = os.path.join(folder_paths.models_dir, folder)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:
        pass  # e.g. a read-only ComfyUI: the messages still name the folder
    folder_paths.add_model_folder_path(folder, default, is_default=True)
    paths = folder_paths.folder_names_and_paths[folder][0]
    folder_paths.folder_names_and_paths[folder] = (paths, set(extensions))


def missing_file_message(folder: str, name, what: str, put: str) -> str | None:
    """Why ``name`` cannot be found in models/<folder> (where it was looked for, what is there, where
    to put ``put``), or None when it exists. Loader nodes return this from ``validate_inputs``, so
    the user sees it before anything runs, on ComfyUI versions that check combo values and on
    those that do not."""
    if isinstance(name, str) and folder_paths.get_full_path(folder, name) is not None:
        return None
    folders = folder_paths.get_folder_paths(folder)
    seen = folder_paths.get_filename_list(folder)
    return (
        f"{what} {name!r} was not found. Searched: {', '.join(folders) or '(no folders)'}. "
        f"Files there: {', '.join(seen) if seen else 'none'}. Put {put} into models/{folder}/ and pick it in the loader."
    )


def save_folder(folder: str) -> str:
    """The folder saves into ``models/<folder>`` go to (the first registered one)."""
    return folder_paths.get_folder_paths(folder)[0]


def numbered_file_name(name: str, suffix: str = "", counter: int = 1) -> str:
    return f"{name}_{counter:05d}{suffix}.safetensors"


def next_numbered_path(folder: str, name: str, suffix: str = "") -> str:
    """``models/<folder>/<name>_<00001><suffix>.safetensors`` with the first free counter (a file
    of that name with any suffix takes its number): a save never overwrites."""
    return next_numbered_path_in(save_folder(folder), name, suffix)


def next_numbered_path_in(path: str, name: str, suffix: str = "") -> str:
    """:func:`next_numbered_path` in the directory ``path`` (created when missing)."""
    os.makedirs(path, exist_ok=True)
    taken = re.compile(rf"^{re.escape(name)}_(\d{{5}})(?:_.*)?\.safetensors$")
    counters = [int(m.group(1)) for f in os.listdir(path) for m in [taken.match(f)] if m]
    return os.path.join(path, numbered_file_name(name, suffix, max(counters, default=0) + 1))


def check_numbered_name_length(folder: str, name: str, what: str, longest_suffix: str = "") -> None:
    """Refuse a ``name`` whose numbered file (:func:`next_numbered_path`, with ``longest_suffix``)
    is longer than ``models/<folder>``'s file system
    takes (``files.check_name_length``), before anything is computed for it."""
    longest = numbered_file_name(name, longest_suffix)
    files.check_name_length(save_folder(folder), name, longest, what)


def save_numbered(folder: str, name: str, write, suffix: str = "") -> str:
    """``write(temporary_path)`` saved as the next free ``models/<folder>/<name>_<n><suffix>.safetensors``
    (:func:`next_numbered_path`); when another process takes that number while this one writes, the
    next one is used. Returns the path."""
    for _ in range(1000):
        path = next_numbered_path(folder, name, suffix)
        try:
            files.write_atomically(path, write, overwrite=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free file name for {name!r} in models/{folder}")
