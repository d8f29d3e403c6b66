"""CatVersion training on ComfyUI's SD1.x MODEL, CLIP and VAE: the part of the ComfyUI adapter the
training node and the command-line trainer share.

* :class:`ComfyFrozenSD1` gives ``catversion_training`` what it needs (VAE posterior, the caption
  through a clone of the CLIP whose layers 9-11 read the live prefix, the UNet's epsilon).
  The clone encodes at the final text layer, as the authors train, even when the CLIP given has a
  CLIP Set Last Layer cut (which would leave the layer-11 prefix without a gradient); the run says so
  (:func:`clip_skip_note`), and the CLIP given keeps its setting.
* :func:`train_concept` runs the recipe on them (``catversion_files`` names and writes the result,
  ``training_progress`` shows the run in the browser).
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
import logging
import os
from dataclasses import dataclass

import torch

import comfy.model_management

from ..catversion.prefix import NUM_TEXT_LAYERS, PREFIX_LOGIT_BIAS, CatVersionPrefix, read_catversion_file
from ..catversion.training import CatVersionRecipe, TrainingRun, train_catversion, training_fingerprint
from ..common import files
from ..common.checks import ELITEInputError, check_image
from ..common.images import pil_to_image
from ..common.loss_curve import loss_curve_image
from .catversion import (
    MODEL_FOLDER,
    PrefixedAttentionBase,
    check_sd1_clip,
    clip_last_layer,
    final_layer_clone,
    text_layer_key,
    unwrapped_self_attention,
)
from .catversion_files import (
    AdapterSaveError,
    check_adapter_name_length,
    check_filename_prefix,
    find_trained_adapter,
    keep_trained_adapter,
    kept_elsewhere_message,
    stored_curve,
)
from .elite_patch import model_sd1_width
from .fingerprints import sd1_models_fingerprint
from .training_progress import ComfyProgress, show_text

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
    gradients can pass through them, reads the live prefix in ``layers`` and encodes the caption at the
    final layer, whatever CLIP Set Last Layer set on ``clip``.
    """

    def __init__(self, model, clip, vae, caption: str, layers: tuple[int, ...], grad_from_layer: int | None = None):
        check_models(model, clip, vae)
        self.model, self.vae = model, vae
        self.live = _LiveRows()
        self.clip = final_layer_clone(clip)
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


def clip_skip_note(clip) -> str | None:
    """What the training does with a CLIP that CLIP Set Last Layer cut, in the artist's words (None for
    a CLIP that runs to its final layer)."""
    skipped = NUM_TEXT_LAYERS - 1 - clip_last_layer(clip)
    if skipped <= 0:
        return None
    what = "its last layer" if skipped == 1 else f"its last {skipped} layers"
    return (f"This CLIP skips {what} (CLIP Set Last Layer {-1 - skipped}); CatVersion trains at the final layer as the "
            "paper does; the adapter is applied to whatever CLIP you give CatVersion Apply.")


def train_concept(model, clip, vae, images, recipe: CatVersionRecipe, run: TrainingRun | None = None,
                  on_step=None, name: str = "CatVersion adapter", on_abort=None) -> tuple[CatVersionPrefix, list[float]]:
    """Learn a CatVersion prefix on ComfyUI models (the training node and the command line), at the
    CLIP's final layer whatever CLIP Set Last Layer set on it."""
    recipe = recipe.checked()
    batches = [images] if isinstance(images, torch.Tensor) else list(images)  # one IMAGE, or one per photo
    count = check_images(batches)
    if not RECOMMENDED_IMAGES[0] <= count <= RECOMMENDED_IMAGES[1]:
        log.warning("CatVersion: training on %d image(s); the paper uses %d-%d photos of the concept.", count,
                    *RECOMMENDED_IMAGES)
    note = clip_skip_note(clip)
    if note:
        log.warning("CatVersion: %s", note)
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


@dataclass
class TrainingResult:
    """What the training node returns and shows: the adapter, its file, whether it was found rather
    than trained, a line for the user and the loss curve as an IMAGE (None when the file has none)."""

    adapter: CatVersionPrefix
    path: str
    reused: bool
    message: str
    curve: torch.Tensor | None


def _reuse(path: str, note: str | None) -> TrainingResult:
    name = os.path.basename(path)
    metadata = files.safetensors_metadata(path, MODEL_FOLDER)
    prefix = read_catversion_file(path)
    adapter = CatVersionPrefix(layers=prefix.layers, keys=prefix.keys, values=prefix.values, name=name)
    message = (f"Found {name}, trained from these photos and settings: not training again "
               "(turn on retrain for a new run)." + (f"\n{note}" if note else ""))
    curve = stored_curve(metadata)
    steps = metadata.get("steps", "")
    last_step = int(steps) if steps.isdigit() else None  # the stored curve is a summary of all the steps
    shown = None
    if curve:
        shown = pil_to_image(loss_curve_image(curve, len(curve), f"{name}: {steps or '?'} steps", last_step))
    return TrainingResult(adapter, path, True, message, shown)


def train_or_reuse(model, clip, vae, images: torch.Tensor, recipe: CatVersionRecipe, filename_prefix: str,
                   retrain: bool = False, node_id: str | None = None) -> TrainingResult:
    """The training node. Unless ``retrain``, a complete adapter in models/catversion made from the
    same photos, recipe and base models (its metadata's fingerprint: ``training_fingerprint`` and
    ``fingerprints.sd1_models_fingerprint``) is loaded instead of training. Otherwise: train with
    the progress in the UI and interrupt handling, then save a new numbered file. A name too long
    for the file system is refused before training; a save that fails all the same keeps the
    adapter under a safe name (``catversion_files.keep_trained_adapter``) and raises
    :class:`AdapterSaveError` naming that file. A CLIP that CLIP Set
    Last Layer cut trains (and finds) the same adapter as the uncut one: the training runs at the final
    layer either way, and the node's text says so."""
    recipe = recipe.checked()
    check_adapter_name_length(filename_prefix, recipe.steps)
    check_filename_prefix(filename_prefix)
    num_images = check_images(images)
    check_models(model, clip, vae)
    fingerprint = training_fingerprint(images, recipe, sd1_models_fingerprint(model, clip, vae, recipe.caption))
    note = clip_skip_note(clip)
    if not retrain:
        found = find_trained_adapter(fingerprint, filename_prefix)
        if found is not None:
            result = _reuse(found, note)
            log.info("CatVersion: %s", result.message)
            show_text(result.message, node_id)
            return result
    progress = ComfyProgress(filename_prefix, recipe, num_images, node_id=node_id, fingerprint=fingerprint, note=note)
    prefix, losses = train_concept(model, clip, vae, images, recipe, on_step=progress.on_step, name=filename_prefix,
                                   on_abort=progress.on_abort)
    path, failure = keep_trained_adapter(prefix, filename_prefix, recipe, recipe.steps, num_images, fingerprint, losses)
    if failure is not None:  # kept under a safe name: say where, and stop the workflow here
        message = kept_elsewhere_message(filename_prefix, path, failure, recipe.steps)
        show_text(message, node_id)
        raise AdapterSaveError(message) from failure
    name = os.path.basename(path)
    log.info("CatVersion: saved %s (loss %.5f at the first step, %.5f at the last)", path, losses[0], losses[-1])
    message = (f"Saved {name} in models/catversion: {recipe.steps} steps, loss {losses[0]:.4f} at the first step, "
               f"{losses[-1]:.4f} at the last." + (f"\n{note}" if note else ""))
    show_text(message, node_id)
    adapter = CatVersionPrefix(layers=prefix.layers, keys=prefix.keys, values=prefix.values, name=name)
    curve = pil_to_image(loss_curve_image(losses, recipe.steps, f"{name}: {recipe.steps} steps"))
    return TrainingResult(adapter, path, False, message, curve)
