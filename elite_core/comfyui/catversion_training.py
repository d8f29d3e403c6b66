"""CatVersion training on ComfyUI's SD1.x MODEL, CLIP and VAE: the part of the ComfyUI adapter the
training node and the command-line trainer share.

* :class:`ComfyFrozenSD1` gives ``catversion_training`` what it needs (VAE posterior, the caption
  through a clone of the CLIP whose layers 9-11 read the live prefix, the UNet's epsilon).
* :func:`train_concept` runs the recipe on them; :func:`save_trained_adapter` writes the result
  into ``models/catversion`` without ever leaving a half-written file.

ComfyUI loads weights under ``torch.inference_mode``; such tensors cannot take part in a backward
pass, so before training every frozen weight that is one is swapped for an ordinary copy with the
same values (ComfyUI's own loaders do the same outside inference mode). Gradient flags of the
frozen weights are switched off for the run and restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

import torch

import comfy.model_management
import comfy.utils

from ..catversion.prefix import NUM_TEXT_LAYERS, PREFIX_LOGIT_BIAS, CatVersionPrefix, save_catversion_safetensors
from ..catversion.training import CatVersionRecipe, StepReport, TrainingRun, train_catversion
from ..common import files
from ..common.checks import ELITEInputError, check_image
from .catversion import MODEL_FOLDER, PrefixedAttentionBase, check_sd1_clip, text_layer_key, unwrapped_self_attention
from .elite_patch import model_sd1_width
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


class ComfyFrozenSD1:
    """The frozen SD1.x MODEL, CLIP and VAE seen through ``catversion_training.FrozenSD1``.

    The CLIP clone runs text layers ``grad_from_layer``..11 (default: the first prefixed layer) so that
    gradients can pass through them, and reads the live prefix in ``layers``.
    """

    def __init__(self, model, clip, vae, caption: str, layers: tuple[int, ...], grad_from_layer: int | None = None):
        check_sd1_clip(clip)
        model_sd1_width(model, "CatVersion can train with")
        _check_vae(vae, model)
        stacked = [k for k in clip.patcher.object_patches if isinstance(clip.patcher.object_patches[k], PrefixedAttentionBase)]
        if stacked:
            raise ELITEInputError(
                "This CLIP already carries a CatVersion adapter (CatVersion Apply). Train on the checkpoint's plain "
                "CLIP; apply the concepts together afterwards."
            )
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
    count = sum(b.shape[0] for b in batches if isinstance(b, torch.Tensor) and b.dim() == 4)
    if count == 0:
        raise ELITEInputError("The training IMAGE batch is empty (0 images): CatVersion learns a concept from 3-10 "
                              "photos of it. Connect them as one batch (e.g. with Batch Images).")
    for batch in batches:
        check_image(batch, "training IMAGE")
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


def adapter_metadata(recipe: CatVersionRecipe, steps_done: int, num_images: int) -> dict[str, str]:
    return {
        "trainer": "elite-personalize CatVersion training (reference recipe)",
        "caption": recipe.caption, "steps": str(steps_done), "planned_steps": str(recipe.steps),
        "batch_size": str(recipe.batch_size), "learning_rate": repr(recipe.learning_rate),
        "resolution": str(recipe.resolution), "flip_probability": repr(recipe.flip_probability),
        "seed": str(recipe.seed), "images": str(num_images),
    }


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
                         num_images: int) -> str:
    """Save into models/catversion; a run that stopped early is named ``<prefix>_<n>_step<done>_of_<planned>``."""
    path = next_adapter_path(filename_prefix, "" if steps_done == recipe.steps else f"_step{steps_done}_of_{recipe.steps}")
    save_adapter_atomically(prefix, path, adapter_metadata(recipe, steps_done, num_images))
    return path


class ComfyProgress:
    """``on_step``/``on_abort`` for the training node: the UI progress bar, a loss line in the log
    now and then, ComfyUI's interrupt, and the prefix of the last completed step saved under its
    own name when the run stops early."""

    def __init__(self, filename_prefix: str, recipe: CatVersionRecipe, num_images: int, log_every: int = 50):
        self.bar = comfy.utils.ProgressBar(recipe.steps)
        self.filename_prefix, self.recipe, self.num_images, self.log_every = filename_prefix, recipe, num_images, log_every

    def on_step(self, report: StepReport) -> None:
        self.bar.update_absolute(report.step, report.steps)
        if report.step % self.log_every == 0 or report.step == report.steps:
            log.info("CatVersion: step %d/%d, loss %.5f", report.step, report.steps, report.loss)
        comfy.model_management.throw_exception_if_processing_interrupted()

    def on_abort(self, report: StepReport, exc: BaseException) -> None:
        path = save_trained_adapter(report.prefix(), self.filename_prefix, self.recipe, report.step, self.num_images)
        why = "interrupted" if isinstance(exc, (comfy.model_management.InterruptProcessingException, KeyboardInterrupt)) \
            else f"stopped by an error ({type(exc).__name__})"
        log.warning("CatVersion: training %s after step %d of %d; the prefix of that step is saved as %s", why,
                    report.step, report.steps, path)


def train_and_save(model, clip, vae, images: torch.Tensor, recipe: CatVersionRecipe, filename_prefix: str) -> CatVersionPrefix:
    """The training node: train with a progress bar and interrupt handling, then save the adapter."""
    recipe = recipe.checked()
    check_filename_prefix(filename_prefix)
    num_images = images.shape[0]
    progress = ComfyProgress(filename_prefix, recipe, num_images)
    prefix, losses = train_concept(model, clip, vae, images, recipe, on_step=progress.on_step, name=filename_prefix,
                                   on_abort=progress.on_abort)
    path = save_trained_adapter(prefix, filename_prefix, recipe, recipe.steps, num_images)
    log.info("CatVersion: saved %s (loss %.5f at the first step, %.5f at the last)", path, losses[0], losses[-1])
    return CatVersionPrefix(layers=prefix.layers, keys=prefix.keys, values=prefix.values, name=os.path.basename(path))
