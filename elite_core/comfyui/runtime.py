"""ComfyUI as a library for the command lines (trainers, evaluation) and the benches: its model
loaders, model management and the pack's model folders, without its server or nodes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..common import files

PACK_DIR = Path(__file__).resolve().parents[2]


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

    from . import catversion

    catversion.register_model_folder()


def load_sd1_checkpoint(name_or_path: str):
    """(MODEL, CLIP, VAE) of an SD1.x checkpoint file, by path or by name in models/checkpoints."""
    import comfy.sd
    import folder_paths

    path = name_or_path if os.path.isfile(name_or_path) else folder_paths.get_full_path("checkpoints", name_or_path)
    if not path:
        folders = ", ".join(folder_paths.get_folder_paths("checkpoints"))
        raise SetupError(f"Checkpoint '{name_or_path}' was not found (as a path, or by name in {folders}). "
                         "Pass the SD1.x .safetensors/.ckpt file, e.g. --checkpoint v1-5-pruned-emaonly.safetensors.")
    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    except (MemoryError, torch.OutOfMemoryError):
        raise  # the file may be fine: the machine ran out of memory
    except Exception as exc:  # nothing ran yet: whatever the file is, one message instead of a traceback
        raise SetupError(_unreadable_checkpoint(path, exc)) from None
    if model is None or clip is None or vae is None:
        raise SetupError(f"'{path}' does not hold a whole SD1.x checkpoint (MODEL, CLIP and VAE).")
    return model, clip, vae


def _unreadable_checkpoint(path: str, exc: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if path.lower().endswith(".safetensors") or not head.startswith((b"PK", b"\x80")):
        return (f"'{path}' cannot be read as an SD1.x checkpoint ({type(exc).__name__}: {str(exc)[:200]}): it is "
                "damaged, not a model file or a model ComfyUI does not know. Pass the SD1.x checkpoint itself, "
                "e.g. --checkpoint v1-5-pruned-emaonly-fp16.safetensors (a name in ComfyUI's models/checkpoints, or a path).")
    return files.describe_pickle_error(path, exc, "SD1.x checkpoints", "models/checkpoints")


def name_in_folder(folder: str, value: str) -> str:
    """A model name in a ComfyUI folder; a file path is added to that folder and its name returned."""
    import folder_paths

    if os.path.isfile(value):
        folder_paths.add_model_folder_path(folder, os.path.dirname(os.path.abspath(value)))
        return os.path.basename(value)
    return value


def load_clip_vision(name_or_path: str):
    """A CLIP vision model by path or by name in models/clip_vision, with ComfyUI's loader."""
    import comfy.clip_vision
    import folder_paths

    path = name_or_path if os.path.isfile(name_or_path) else folder_paths.get_full_path("clip_vision", name_or_path)
    if not path:
        raise SetupError(f"CLIP vision '{name_or_path}' was not found (as a path or in models/clip_vision).")
    return comfy.clip_vision.load(path)


def sample_image(model, vae, positive, negative, seed: int, size: int, steps: int, cfg: float, sampler: str,
                 scheduler: str) -> torch.Tensor:
    """One image as ComfyUI's KSampler and VAE Decode make it (empty latent, seeded noise)."""
    import comfy.sample

    latent = torch.zeros([1, 4, size // 8, size // 8])
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent, denoise=1.0,
                                  disable_pbar=True, seed=seed)
    return vae.decode(samples)
