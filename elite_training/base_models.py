"""The frozen SD1.x base models of the trainers, from local files only: an SD1.x diffusers folder, or a
single-file SD1.x checkpoint (.safetensors, original LDM layout) as ComfyUI users have it.

A single file is converted with diffusers' own single-file converters, using the SD v1.5 configs
shipped in ``sd15_config/`` (or those of a diffusers folder given as ``config``); the CLIP tokenizer
comes from ``tokenizer``, ``config``'s tokenizer/ or ComfyUI's comfy/sd1_tokenizer/."""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path

from elite_core.comfyui.runtime import SetupError, find_comfyui

from .data.objects import DataError

log = logging.getLogger(__name__)

SD15_CONFIG = Path(__file__).resolve().parent / "sd15_config"
UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."
EXPECTED = ("--pretrained must be an SD1.x diffusers folder (unet/, vae/, text_encoder/, tokenizer/) or an SD1.x "
            f"single-file checkpoint .safetensors holding {UNET}*, {VAE}* and {TEXT}* weights")


def load_models(pretrained: str, image_encoder: str, device, dtype, config: str | None = None,
                tokenizer: str | None = None):
    """(unet, vae, text_encoder, tokenizer, vision), frozen, on ``device`` in ``dtype``.

    ``pretrained``: an SD1.x diffusers folder or single-file .safetensors checkpoint. For a single file,
    ``config`` is a diffusers folder whose unet/, vae/, text_encoder/ (and tokenizer/) configs to use
    instead of the shipped SD v1.5 ones, and ``tokenizer`` a CLIP tokenizer folder (vocab.json, merges.txt).
    """
    from transformers import CLIPVisionModel

    path = Path(pretrained).expanduser()
    try:
        if path.is_dir():
            unet, vae, text, tok = _from_folder(path)
        else:
            unet, vae, text, tok = _from_single_file(path, Path(config or SD15_CONFIG).expanduser(), tokenizer, dtype)
        vision = CLIPVisionModel.from_pretrained(image_encoder, local_files_only=True)
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot load the base models: {exc}. {EXPECTED}, and --image-encoder a CLIP vision "
                        "folder.") from None
    for module in (unet, vae, text, vision):
        module.requires_grad_(False).eval().to(device, dtype)
    return unet, vae, text, tok, vision


def _from_folder(folder: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return (UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True),
            AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True),
            CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True),
            CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True))


def _from_single_file(path: Path, config: Path, tokenizer: str | None, dtype):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as convert
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    state = _read_safetensors(path)
    load_config = dict(pretrained_model_name_or_path=config, local_files_only=True)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(subfolder="unet", **load_config))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(subfolder="vae", **load_config))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(subfolder="text_encoder", **load_config))
    _check_sd1(path, state, unet.config.cross_attention_dim)
    log.info("Converting the SD1.x checkpoint %s with the configs of %s", path, config)
    text_weights = convert.convert_ldm_clip_checkpoint(state)
    if not hasattr(text, "text_model"):  # transformers >= 5.6 keeps CLIPTextModel's weights at the top level
        text_weights = {key.removeprefix("text_model."): value for key, value in text_weights.items()}
    for name, model, weights in (("UNet", unet, convert.convert_ldm_unet_checkpoint(state, unet.config)),
                                 ("VAE", vae, convert.convert_ldm_vae_checkpoint(state, vae.config)),
                                 ("text encoder", text, text_weights)):
        _assign(path, config, name, model, weights, dtype)
    return unet, vae, text, CLIPTokenizer.from_pretrained(_tokenizer_folder(tokenizer, config), local_files_only=True)


def _assign(path: Path, config: Path, name: str, model, weights: dict, dtype) -> None:
    """Give the empty ``model`` its converted ``weights`` in ``dtype``; all must be there, with their shapes."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    wrong = [f"{key} is {tuple(weights[key].shape)}, not {tuple(value.shape)}" for key, value in expected.items()
             if key in weights and weights[key].shape != value.shape]
    if missing or wrong:
        problem = f"lacks {len(missing)} of them (e.g. {missing[0]})" if missing else f"has other shapes ({wrong[0]})"
        raise DataError(f"{path} does not hold the {name} weights of the configuration in {config}: it {problem}. "
                        f"{EXPECTED}; for a non-standard SD1.x, pass --config with its diffusers configs.")
    # fresh copies: tensors straight from the file can be unaligned, which changes CPU kernels' rounding
    model.load_state_dict({key: weights[key].to(dtype if weights[key].is_floating_point() else None, copy=True)
                           for key in expected}, assign=True)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise DataError(f"{path} is a pickled checkpoint, which is not loaded (unpickling can run code). "
                        f"Use the .safetensors version of the model. {EXPECTED}.")
    if not path.is_file():
        raise DataError(f"{path} does not exist. {EXPECTED}.")
    if path.suffix.lower() != ".safetensors":
        raise DataError(f"{path} is neither a folder nor a .safetensors file. {EXPECTED}.")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{path} is not a readable safetensors file ({exc}). {EXPECTED}.") from None
    old_text = "cond_stage_model.transformer."  # some SD1.x files lack CLIP's text_model. level
    return {TEXT + key.removeprefix(old_text) if key.startswith(old_text) and not key.startswith(TEXT) else key: value
            for key, value in state.items()}


def _check_sd1(path: Path, state: dict, context_width: int) -> None:
    missing = [prefix + "*" for prefix in (UNET, VAE, TEXT) if not any(key.startswith(prefix) for key in state)]
    if missing:
        family = ("; its keys are those of an SDXL checkpoint" if any(key.startswith("conditioner.") for key in state)
                  else "; its keys are those of an SD2.x checkpoint (OpenCLIP)"
                  if any(key.startswith("cond_stage_model.model.") for key in state) else "")
        raise DataError(f"{path} is not an SD1.x checkpoint: it has no {', '.join(missing)} weights{family}. "
                        f"{EXPECTED}.")
    widths = {value.shape[-1] for key, value in state.items()
              if key.startswith(UNET) and key.endswith("attn2.to_k.weight")}
    if widths != {context_width}:
        raise DataError(f"{path} is not an SD1.x checkpoint: its UNet's text context is {sorted(widths)} wide, "
                        f"SD1.x's is {context_width}. {EXPECTED}.")


def _tokenizer_folder(explicit: str | None, config: Path) -> Path:
    """``explicit``, else ``config``'s tokenizer/, else ComfyUI's comfy/sd1_tokenizer/."""
    candidates = [Path(explicit).expanduser()] if explicit else [config / "tokenizer"]
    if not explicit:
        spec = find_spec("comfy")
        roots = [Path(p) for p in spec.submodule_search_locations] if spec and spec.submodule_search_locations else []
        try:
            roots.append(find_comfyui(None) / "comfy")
        except SetupError:
            pass
        candidates += [root / "sd1_tokenizer" for root in roots]
    for folder in candidates:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return folder
    raise DataError("No CLIP tokenizer was found (vocab.json and merges.txt) in "
                    f"{', '.join(map(str, candidates))}. Pass --tokenizer <ComfyUI>/comfy/sd1_tokenizer "
                    "(or set $COMFYUI_DIR to the ComfyUI folder).")
