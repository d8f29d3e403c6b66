"""CatVersion training on ComfyUI's SD1.x MODEL, CLIP and VAE: the part of the ComfyUI adapter the
training node and the command-line trainer share.

* :class:`ComfyFrozenSD1` gives ``catversion_training`` what it needs (VAE posterior, the caption
  through a clone of the CLIP whose layers 9-11 read the live prefix, the UNet's epsilon).
* :func:`train_concept` runs the recipe on them; :func:`save_trained_adapter` writes the result
  into ``models/catversion`` without ever leaving a half-written file.
* :func:`train_or_reuse` is the training node: it first looks in ``models/catversion`` (file
  headers only) for a complete adapter made from the same photos, recipe and base models (a content
  fingerprint in the file's metadata) and loads it instead of training; while it trains, the node
  shows the step, the loss and a loss curve in the browser.

ComfyUI loads weights under ``torch.inference_mode``; such tensors cannot take part in a backward
pass, so before training every frozen weight that is one is swapped for an ordinary copy with the
same values (ComfyUI's own loaders do the same outside inference mode). Gradient flags of the
frozen weights are switched off for the run and restored afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ..catversion.prefix import (
    NUM_TEXT_LAYERS,
    PREFIX_LOGIT_BIAS,
    CatVersionPrefix,
    read_catversion_file,
    save_catversion_safetensors,
)
from ..catversion.training import CatVersionRecipe, StepReport, TrainingRun, train_catversion, training_fingerprint
from ..common import files
from ..common.checks import ELITEInputError, check_image
from ..common.images import pil_to_image
from ..common.loss_curve import curve_summary, loss_curve_image
from .catversion import MODEL_FOLDER, PrefixedAttentionBase, check_sd1_clip, text_layer_key, unwrapped_self_attention
from .elite_patch import model_sd1_width
from .fingerprints import sd1_models_fingerprint
from .folders import next_numbered_path

log = logging.getLogger("elite.catversion")

SD1_LATENT_CHANNELS = 4
RECOMMENDED_IMAGES = (3, 10)


class _LiveRows:
    """The prefix rows of the caption encoding in progress: (layers, P, 768) keys and values."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None


class TrainablePrefixedSelfAttention(PrefixedAttentionBase):
    """Layer ``j`` of the prefix being trained: its rows are read, with their gradient, from the
    live tensors set around each caption encoding."""

    def __init__(self, base: torch.nn.Module, live: _LiveRows, j: int):
        super().__init__(base)
        self.live, self.j = live, j

    def rows(self, device, dtype):
        if self.live.keys is None:
            raise RuntimeError("the CatVersion training CLIP was used outside a training step")
        keys, values = self.live.keys[self.j].to(device, dtype), self.live.values[self.j].to(device, dtype)
        return keys, values, torch.full((keys.shape[0],), PREFIX_LOGIT_BIAS, device=device, dtype=dtype)


class TrainingCLIPLayer(torch.nn.Module):
    """A CLIP text layer for training: the same sub-modules as ComfyUI's CLIPLayer, residuals added
    out of place (ComfyUI adds them in place, which autograd cannot differentiate through)."""

    def __init__(self, base: torch.nn.Module, self_attn: torch.nn.Module):
        super().__init__()
        self.layer_norm1, self.layer_norm2, self.mlp, self.self_attn = base.layer_norm1, base.layer_norm2, base.mlp, self_attn

    def forward(self, x, mask=None, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))


def _check_vae(vae, model) -> None:
    fsm = getattr(vae, "first_stage_model", None)
    has_posterior = all(hasattr(fsm, name) for name in ("encoder", "quant_conv", "regularization"))
    channels = getattr(vae, "latent_channels", None)
    model_channels = getattr(model.model.latent_format, "latent_channels", SD1_LATENT_CHANNELS)
    if not has_posterior or channels != SD1_LATENT_CHANNELS or model_channels != SD1_LATENT_CHANNELS:
        raise ELITEInputError(
            f"CatVersion training needs the SD1.x VAE (a KL autoencoder with {SD1_LATENT_CHANNELS} latent channels); "
            f"this VAE ({type(fsm).__name__}) has {channels} latent channels. Use the VAE of the SD1.x checkpoint."
        )


def check_models(model, clip, vae) -> None:
    """Refuse a MODEL, CLIP or VAE that is not SD1.x, or a CLIP that already carries an adapter."""
    check_sd1_clip(clip)
    model_sd1_width(model, "CatVersion can train with")
    _check_vae(vae, model)
    stacked = [k for k in clip.patcher.object_patches if isinstance(clip.patcher.object_patches[k], PrefixedAttentionBase)]
    if stacked:
        raise ELITEInputError(
            "This CLIP already carries a CatVersion adapter (CatVersion Apply). Train on the checkpoint's plain "
            "CLIP; apply the concepts together afterwards."
        )


def check_images(images) -> int:
    """The number of training photos in an IMAGE batch (or a list of them); refuse none or broken ones."""
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    count = sum(b.shape[0] for b in batches if isinstance(b, torch.Tensor) and b.dim() == 4)
    if count == 0:
        raise ELITEInputError("The training IMAGE batch is empty (0 images): CatVersion learns a concept from 3-10 "
                              "photos of it. Connect them as one batch (e.g. with Batch Images).")
    for batch in batches:
        check_image(batch, "training IMAGE")
    return count


class ComfyFrozenSD1:
    """The frozen SD1.x MODEL, CLIP and VAE seen through ``catversion_training.FrozenSD1``.

    The CLIP clone runs text layers ``grad_from_layer``..11 (default: the first prefixed layer) so that
    gradients can pass through them, and reads the live prefix in ``layers``.
    """

    def __init__(self, model, clip, vae, caption: str, layers: tuple[int, ...], grad_from_layer: int | None = None):
        check_models(model, clip, vae)
        self.model, self.vae = model, vae
        self.live = _LiveRows()
        self.clip = clip.clone()
        first = min(layers) if grad_from_layer is None else grad_from_layer
        for layer in range(first, NUM_TEXT_LAYERS):  # every layer the gradient passes through
            attention = unwrapped_self_attention(self.clip, layer)
            if layer in layers:
                attention = TrainablePrefixedSelfAttention(attention, self.live, layers.index(layer))
            base = comfy.utils.get_attr(self.clip.cond_stage_model, text_layer_key(layer))
            self.clip.patcher.add_object_patch(text_layer_key(layer), TrainingCLIPLayer(base, attention))
        self.tokens = self.clip.tokenize(caption)
        self.device = model.load_device
        self.latent_scale = float(model.model.latent_format.scale_factor)

    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        comfy.model_management.load_models_gpu([self.vae.patcher])
        fsm = self.vae.first_stage_model
        means, stds = [], []
        for one in pixels.split(1):  # one image at a time: 512 px through the VAE encoder is heavy
            moments = fsm.quant_conv(fsm.encoder(one.to(self.vae.device, self.vae.vae_dtype))).float()
            mean, logvar = moments.chunk(2, dim=1)
            means.append(mean)
            stds.append(torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))
        return torch.cat(means).to(self.device), torch.cat(stds).to(self.device)

    def encode_caption(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        self.live.keys, self.live.values = keys, values
        try:
            context = self.clip.encode_from_tokens(self.tokens)
        finally:
            self.live.keys = self.live.values = None
        return context.to(self.device)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        base = self.model.model
        dtype = base.manual_cast_dtype or base.get_dtype()
        out = base.diffusion_model(latents.to(dtype), timesteps=timesteps.float(), context=context.to(dtype),
                                   transformer_options={})
        return out.float()

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.model.model.diffusion_model, self.clip.cond_stage_model]

    def load_for_training(self) -> None:
        comfy.model_management.load_models_gpu([self.model, self.clip.patcher])


@contextlib.contextmanager
def frozen_for_autograd(modules: list[torch.nn.Module]):
    """Within: no frozen weight asks for a gradient, and none is an inference-mode tensor (those are
    swapped for ordinary copies, for good). The gradient flags are restored on the way out."""
    flags = []
    for module in modules:
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is None:
                    continue
                asks_for_grad = param.requires_grad
                if param.is_inference():
                    param = sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                if asks_for_grad:
                    flags.append(param)
                    param.requires_grad_(False)
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for param in flags:
            param.requires_grad_(True)


def train_concept(model, clip, vae, images, recipe: CatVersionRecipe, run: TrainingRun | None = None,
                  on_step=None, name: str = "CatVersion adapter", on_abort=None) -> tuple[CatVersionPrefix, list[float]]:
    """Learn a CatVersion prefix on ComfyUI models (the training node and the command line)."""
    recipe = recipe.checked()
    batches = [images] if isinstance(images, torch.Tensor) else list(images)  # one IMAGE, or one per photo
    count = check_images(batches)
    if not RECOMMENDED_IMAGES[0] <= count <= RECOMMENDED_IMAGES[1]:
        log.warning("CatVersion: training on %d image(s); the paper uses %d-%d photos of the concept.", count,
                    *RECOMMENDED_IMAGES)
    with torch.inference_mode(False), torch.enable_grad():
        frozen = ComfyFrozenSD1(model, clip, vae, recipe.caption, recipe.layers)
        images = [batch.clone() for batch in batches]  # ordinary tensors (an IMAGE is made in inference mode)
        frozen.load_for_training()
        with frozen_for_autograd(frozen.frozen_modules()):
            log.info("CatVersion: training a prefix for layers %s on %d image(s), caption %r, %d steps of batch %d%s, "
                     "lr %g, on %s", recipe.layers, count, recipe.caption, recipe.steps, recipe.batch_size,
                     f" x {run.world_size} processes" if run and run.world_size > 1 else "", recipe.learning_rate,
                     frozen.device)
            return train_catversion(frozen, images, recipe, run, on_step, name, on_abort)


# --------------------------------------------------------------------------- saving

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
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
    name = (filename_prefix or "").strip()
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ELITEInputError(
            f"The adapter name {filename_prefix!r} cannot be a file name: use letters, digits, spaces, '.', '_' and "
            "'-' (no folders), e.g. 'my_teddybear'."
        )
    return name


def next_adapter_path(filename_prefix: str, suffix: str = "") -> str:
    """``models/catversion/<prefix>_<00001>.safetensors`` with the first free counter: never overwrites."""
    return next_numbered_path(MODEL_FOLDER, check_filename_prefix(filename_prefix), suffix)


def save_trained_adapter(prefix: CatVersionPrefix, filename_prefix: str, recipe: CatVersionRecipe, steps_done: int,
                         num_images: int, fingerprint: str | None = None, losses: list[float] | None = None) -> str:
    """Save into models/catversion; a run that stopped early is named ``<prefix>_<n>_step<done>_of_<planned>``."""
    path = next_adapter_path(filename_prefix, "" if steps_done == recipe.steps else f"_step{steps_done}_of_{recipe.steps}")
    save_adapter_atomically(prefix, path, adapter_metadata(recipe, steps_done, num_images, fingerprint, losses))
    return path


# --------------------------------------------------------------------------- finding a trained adapter again


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


def _stored_curve(metadata: dict[str, str]) -> list[float]:
    try:
        curve = json.loads(metadata.get("loss_curve", "[]"))
        return [float(v) for v in curve] if isinstance(curve, list) else []
    except (ValueError, TypeError):
        return []


# --------------------------------------------------------------------------- the node: progress, reuse, training


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
    the prefix of the last completed step saved under its own name when the run stops early."""

    def __init__(self, filename_prefix: str, recipe: CatVersionRecipe, num_images: int, log_every: int = 50,
                 node_id: str | None = None, fingerprint: str | None = None, show_every_s: float = 1.0):
        self.bar = comfy.utils.ProgressBar(recipe.steps, node_id=node_id)
        self.filename_prefix, self.recipe, self.num_images, self.log_every = filename_prefix, recipe, num_images, log_every
        self.node_id, self.fingerprint, self.show_every_s = node_id, fingerprint, show_every_s
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
            show_text(text, self.node_id)
        else:
            self.bar.update_absolute(report.step, report.steps)
        if report.step % self.log_every == 0 or report.step == report.steps:
            log.info("CatVersion: step %d/%d, loss %.5f", report.step, report.steps, report.loss)
        comfy.model_management.throw_exception_if_processing_interrupted()

    def on_abort(self, report: StepReport, exc: BaseException) -> None:
        path = save_trained_adapter(report.prefix(), self.filename_prefix, self.recipe, report.step, self.num_images,
                                    self.fingerprint, self.losses[:report.step])
        why = "interrupted" if isinstance(exc, (comfy.model_management.InterruptProcessingException, KeyboardInterrupt)) \
            else f"stopped by an error ({type(exc).__name__})"
        log.warning("CatVersion: training %s after step %d of %d; the prefix of that step is saved as %s", why,
                    report.step, report.steps, path)
        show_text(f"Training {why} after step {report.step} of {report.steps}; that step's prefix is saved as "
                  f"{os.path.basename(path)}.", self.node_id)


@dataclass
class TrainingResult:
    """What the training node returns and shows: the adapter, its file, whether it was found rather
    than trained, a line for the user and the loss curve as an IMAGE (None when the file has none)."""

    adapter: CatVersionPrefix
    path: str
    reused: bool
    message: str
    curve: torch.Tensor | None


def _reuse(path: str) -> TrainingResult:
    name = os.path.basename(path)
    metadata = files.safetensors_metadata(path, MODEL_FOLDER)
    prefix = read_catversion_file(path)
    adapter = CatVersionPrefix(layers=prefix.layers, keys=prefix.keys, values=prefix.values, name=name)
    message = (f"Found {name}, trained from these photos and settings: not training again "
               "(turn on retrain for a new run).")
    curve = _stored_curve(metadata)
    shown = pil_to_image(loss_curve_image(curve, len(curve), f"{name}: {metadata.get('steps', '?')} steps")) if curve else None
    return TrainingResult(adapter, path, True, message, shown)


def train_or_reuse(model, clip, vae, images: torch.Tensor, recipe: CatVersionRecipe, filename_prefix: str,
                   retrain: bool = False, node_id: str | None = None) -> TrainingResult:
    """The training node. Unless ``retrain``, a complete adapter in models/catversion made from the
    same photos, recipe and base models (its metadata's fingerprint: ``training_fingerprint`` and
    ``fingerprints.sd1_models_fingerprint``) is loaded instead of training. Otherwise: train with
    the progress in the UI and interrupt handling, then save a new numbered file."""
    recipe = recipe.checked()
    check_filename_prefix(filename_prefix)
    num_images = check_images(images)
    check_models(model, clip, vae)
    fingerprint = training_fingerprint(images, recipe, sd1_models_fingerprint(model, clip, vae, recipe.caption))
    if not retrain:
        found = find_trained_adapter(fingerprint, filename_prefix)
        if found is not None:
            result = _reuse(found)
            log.info("CatVersion: %s", result.message)
            show_text(result.message, node_id)
            return result
    progress = ComfyProgress(filename_prefix, recipe, num_images, node_id=node_id, fingerprint=fingerprint)
    prefix, losses = train_concept(model, clip, vae, images, recipe, on_step=progress.on_step, name=filename_prefix,
                                   on_abort=progress.on_abort)
    path = save_trained_adapter(prefix, filename_prefix, recipe, recipe.steps, num_images, fingerprint, losses)
    name = os.path.basename(path)
    log.info("CatVersion: saved %s (loss %.5f at the first step, %.5f at the last)", path, losses[0], losses[-1])
    message = (f"Saved {name} in models/catversion: {recipe.steps} steps, loss {losses[0]:.4f} at the first step, "
               f"{losses[-1]:.4f} at the last.")
    show_text(message, node_id)
    adapter = CatVersionPrefix(layers=prefix.layers, keys=prefix.keys, values=prefix.values, name=name)
    curve = pil_to_image(loss_curve_image(losses, recipe.steps, f"{name}: {recipe.steps} steps"))
    return TrainingResult(adapter, path, False, message, curve)
