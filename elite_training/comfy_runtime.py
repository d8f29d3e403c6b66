"""ComfyUI as a library for the command-line trainers: its model loaders, model management and
the pack's ComfyUI adapter, without its server or nodes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]


class SetupError(RuntimeError):
    """The command line cannot start; the message says what to fix."""


def find_comfyui(explicit: str | None) -> Path:
    """The ComfyUI folder: ``--comfyui``, else $COMFYUI_DIR, else the one this pack is installed in
    (ComfyUI/custom_nodes/<pack>)."""
    candidates = [explicit] if explicit else [os.environ.get("COMFYUI_DIR"), str(PACK_DIR.parents[1])]
    for candidate in filter(None, candidates):
        path = Path(candidate).expanduser().resolve()
        if (path / "comfy" / "sd.py").is_file() and (path / "folder_paths.py").is_file():
            return path
    where = explicit or f"$COMFYUI_DIR or {PACK_DIR.parents[1]}"
    raise SetupError(
        f"ComfyUI was not found at {where}. Pass --comfyui /path/to/ComfyUI (the folder with main.py and comfy/); "
        "the trainer uses ComfyUI's own model loading, as the nodes do."
    )


def start_comfyui(comfy_dir: Path, cpu: bool, base_directory: str | None = None) -> None:
    """Import ComfyUI from ``comfy_dir`` (CPU-only when ``cpu``) and register the pack's model folders.

    Call after ``accelerate`` has picked this process's device: ComfyUI reads it when it starts.
    """
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = cpu
    if base_directory:
        args.base_directory = base_directory
    import comfy.model_management  # noqa: F401  (picks the device)
    from elite_core import comfy_catversion

    comfy_catversion.register_model_folder()


def load_sd1_checkpoint(name_or_path: str):
    """(MODEL, CLIP, VAE) of an SD1.x checkpoint file, by path or by name in models/checkpoints."""
    import comfy.sd
    import folder_paths

    path = name_or_path if os.path.isfile(name_or_path) else folder_paths.get_full_path("checkpoints", name_or_path)
    if not path:
        folders = ", ".join(folder_paths.get_folder_paths("checkpoints"))
        raise SetupError(f"Checkpoint '{name_or_path}' was not found (as a path, or by name in {folders}). "
                         "Pass the SD1.x .safetensors/.ckpt file, e.g. --checkpoint v1-5-pruned-emaonly.safetensors.")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    if model is None or clip is None or vae is None:
        raise SetupError(f"'{path}' does not hold a whole SD1.x checkpoint (MODEL, CLIP and VAE).")
    return model, clip, vae
