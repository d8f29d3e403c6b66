"""ELITE's training objectives (Wei et al., ICCV 2023; docs/reference/elite.md §9.2) on diffusers/transformers
models: the text injection with the sequence shift, the trainable global K/V in the UNet's 16
cross-attention layers, and the global stage's loss. Plain torch: the models are handed in.

Global stage, per batch (the reference ``train_global.py``)::

    words = GlobalMapper(CLIP vision blocks 24, 4, 8, 12, 16 of the image)      (B, 5, 768), trainable
    c     = CLIP text(prompt with the 5 words at S, later tokens shifted right by 4)
    eps^  = UNet(z_t, t, c) with to_k/to_v of every attn2 replaced by the mapper's K/V (trainable)
    L     = mean_b mean_{c,h,w} (eps^ - eps)^2 + 0.01 * mean |words|

Local stage (``train_local.py``): the global mapper frozen, its w0 injected; the local mapper maps
the object's CLIP features to 256 tokens (background patches zeroed); every attn2 adds the gated
local branch at λ = 1; the loss is the masked ε-MSE plus 1e-4 · the mean over the 16 layers of
mean |E · Wv_local| (see :class:`LocalStage`).

Everything else (UNet, both CLIPs, VAE) is frozen. The K/V copies start from the UNet's own.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..common.noise_schedule import NoiseSchedule, add_noise, scaled_linear_schedule
from .clip_input import select_elite_layers
from .diffusers_attention import elite_cross_attention, sdpa_attention
from .local_attention import local_term
from .mappers import GlobalMapper, LocalMapper, MapperWidths
from .sites import SD1_ATTN2_SITES

GLOBAL_WORD_REGULARISER = 0.01
LATENT_SCALE = 0.18215


def shift_inject(token_embeddings: torch.Tensor, index: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, T, D) with ``words`` (B, L, D) at ``index[b]``: the placeholder is replaced,
    the tokens after it move right by L - 1 and the last L - 1 of the T fall off (docs/reference/elite.md §6)."""
    length = token_embeddings.shape[1]
    rows = []
    for b in range(token_embeddings.shape[0]):
        k = int(index[b])
        rows.append(torch.cat([token_embeddings[b, :k], words[b].to(token_embeddings.dtype),
                               token_embeddings[b, k + 1:]])[:length])
    return torch.stack(rows)


@contextlib.contextmanager
def injected_words(text_encoder: nn.Module, index: torch.Tensor, words: torch.Tensor):
    """Within: ``text_encoder`` (a transformers CLIP text model) puts ``words`` at the placeholder of
    every prompt, before position embeddings are added (a hook on its input embedding)."""
    hook = text_encoder.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: shift_inject(output, index, words))
    try:
        yield
    finally:
        hook.remove()


def vision_features(image_encoder: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """ELITE's five CLIP vision layers (blocks 24, 4, 8, 12, 16) of a transformers CLIPVisionModel."""
    hidden = image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states
    return select_elite_layers(torch.stack(hidden[1:], dim=1))  # hidden[0] is the embedding output


def posterior_sample(vae: nn.Module, pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(mean + std * noise) * 0.18215 of a diffusers AutoencoderKL's posterior of ``pixels`` in [-1, 1]."""
    posterior = vae.encode(pixels).latent_dist
    return (posterior.mean + posterior.std * noise) * LATENT_SCALE


def attn2_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """The 16 cross-attention modules of a diffusers SD1.x UNet, by the site's checkpoint prefix."""
    found = {}
    for site in SD1_ATTN2_SITES:
        module = unet
        for part in site.diffusers.split("."):
            module = getattr(module, part)
        found[site.ckpt_prefix] = module
    return found


class _LocalInputs:
    """The local branch's inputs for the UNet call in progress, and the local values it produced."""

    def __init__(self):
        self.tokens: torch.Tensor | None = None  # (B, 256, D) masked local tokens
        self.index: torch.Tensor | None = None  # (B,) placeholder token index
        self.scale = 1.0  # λ: training's 1; sampling may choose another
        self.values: list[torch.Tensor] = []  # E · Wv_local of every attn2 call (the value regulariser)


class StageAttnProcessor:
    """attn2 processor of the training stages. Text keys/values come from ELITE's global K/V (held by
    reference: a mapper's ``{site}_to_k``/``_to_v``), not the layer's own ``to_k``/``to_v``. With
    ``local_kv`` it adds the local branch at λ = 1, its gate normalised by one maximum over the whole
    batch as the reference's training step computes it (docs/reference/elite.md §7); while ``local_inputs`` holds no tokens,
    the global branch only (sampling's unconditional pass)."""

    def __init__(self, to_k: nn.Linear, to_v: nn.Linear, local_kv: tuple[nn.Linear, nn.Linear] | None = None,
                 local_inputs: _LocalInputs | None = None):
        self.to_k, self.to_v, self.local_kv, self.local_inputs = to_k, to_v, local_kv, local_inputs

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        local = self._local_term if self.local_kv is not None else None
        return elite_cross_attention(attn, hidden_states, encoder_hidden_states, self.to_k, self.to_v, attention_mask,
                                     local)

    def _local_term(self, q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
        inputs = self.local_inputs
        if inputs.tokens is None:
            return None
        selection = F.one_hot(inputs.index.to(q.device), k.shape[1]).to(q.dtype)
        k_local, v_local = self.local_kv[0](inputs.tokens), self.local_kv[1](inputs.tokens)
        inputs.values.append(v_local)
        return local_term(q, k, selection, k_local, v_local, heads, inputs.scale, sdpa_attention, per_sample=False)


def _site_kv(mapper: nn.Module, prefix: str) -> tuple[nn.Linear, nn.Linear]:
    return getattr(mapper, f"{prefix}_to_k"), getattr(mapper, f"{prefix}_to_v")


def _install(unet: nn.Module, make) -> None:
    processors = dict(unet.attn_processors)
    for site in SD1_ATTN2_SITES:
        processors[f"{site.diffusers}.processor"] = make(site.ckpt_prefix)
    unet.set_attn_processor(processors)


def new_mapper(kind: type[GlobalMapper] | type[LocalMapper], unet: nn.Module, widths: MapperWidths, seed: int):
    """A mapper to train: seeded default init of the MLPs, K/V copied from the UNet's attn2 (the
    reference starts both stages' K/V from SD's own ``to_k``/``to_v``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mapper = kind(widths, with_kv=True)
    with torch.no_grad():
        for prefix, attn in attn2_modules(unet).items():
            to_k, to_v = _site_kv(mapper, prefix)
            to_k.weight.copy_(attn.to_k.weight)
            to_v.weight.copy_(attn.to_v.weight)
    return mapper


def new_global_mapper(unet: nn.Module, widths: MapperWidths, seed: int) -> GlobalMapper:
    return new_mapper(GlobalMapper, unet, widths, seed)


def new_local_mapper(unet: nn.Module, widths: MapperWidths, seed: int) -> LocalMapper:
    return new_mapper(LocalMapper, unet, widths, seed)


class GlobalStage(nn.Module):
    """The global stage's loss. The mapper (MLPs and K/V) is the only parameter; the frozen models
    are held outside the module's parameters. Installs :class:`StageAttnProcessor` on the UNet's attn2."""

    def __init__(self, mapper: GlobalMapper, unet: nn.Module, text_encoder: nn.Module, image_encoder: nn.Module,
                 schedule: NoiseSchedule | None = None, word_regulariser: float = GLOBAL_WORD_REGULARISER,
                 identity=None, plain_weight: float = 0.0):
        super().__init__()
        self.mapper = mapper
        self._frozen = (unet, text_encoder, image_encoder)
        self.schedule = schedule or scaled_linear_schedule()
        self.word_regulariser = word_regulariser
        # Taming-Encoder options (elite_core.elite.taming), off by default
        self.identity, self.plain_weight = identity, plain_weight
        _install(unet, lambda prefix: StageAttnProcessor(*_site_kv(mapper, prefix)))

    def forward(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, pixels_clip: torch.Tensor,
                input_ids: torch.Tensor, placeholder_index: torch.Tensor,
                plain: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a batch; ``plain`` (latents, noise, timesteps, input_ids of captions without the
        concept) adds ``plain_weight`` x their eps-MSE (regularised joint training)."""
        unet, text_encoder, image_encoder = self._frozen
        with torch.no_grad():
            features = vision_features(image_encoder, pixels_clip)
        words = self.mapper(features)
        with injected_words(text_encoder, placeholder_index, words):
            context = text_encoder(input_ids=input_ids)[0]
        noisy = add_noise(latents, noise, timesteps, self.schedule)
        predicted = unet(noisy, timesteps, encoder_hidden_states=context).sample
        mse = F.mse_loss(predicted.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
        regulariser = words.abs().mean() * self.word_regulariser
        loss, parts = mse + regulariser, {"mse": mse.detach(), "regulariser": regulariser.detach()}
        if self.identity is not None:
            parts["identity"] = self.identity(noisy, predicted, timesteps, pixels_clip, self.schedule)
            loss = loss + parts["identity"]
        if plain is not None:
            with torch.no_grad():
                plain_context = text_encoder(input_ids=plain["input_ids"])[0]
            plain_noisy = add_noise(plain["latents"], plain["noise"], plain["timesteps"], self.schedule)
            plain_eps = unet(plain_noisy, plain["timesteps"], encoder_hidden_states=plain_context).sample
            parts["plain_mse"] = F.mse_loss(plain_eps.float(), plain["noise"].float())
            loss = loss + self.plain_weight * parts["plain_mse"]
        return loss, {k: v.detach() for k, v in parts.items()}


LOCAL_VALUE_REGULARISER = 1e-4
LOSS_NORMALISATIONS = ("reference", "per_element")


def object_token_mask(object_segmentation: torch.Tensor, grid: int = 16) -> torch.Tensor:
    """(B, grid², 1): the object mask (B, C, 224, 224) in {0, 1}, nearest-resized to the CLIP patch grid."""
    mask = F.interpolate(object_segmentation, size=(grid, grid), mode="nearest")
    return mask[:, 0].reshape(mask.shape[0], -1, 1)


class LocalStage(nn.Module):
    """The local stage's loss (docs/reference/elite.md §9.2). The local mapper (MLPs and its 16 K/V) is the only parameter;
    the global mapper is frozen and only its first word w0 is injected; the UNet runs both branches
    at λ = 1 with the global mapper's K/V for the text.

    ``normalisation``: "reference" divides the masked squared error summed over the 4 latent channels
    by the mask summed over one channel (4x a per-element mean, as the reference computes it);
    "per_element" is the per-element mean over the masked region.
    """

    def __init__(self, local_mapper: LocalMapper, global_mapper: GlobalMapper, unet: nn.Module,
                 text_encoder: nn.Module, image_encoder: nn.Module, schedule: NoiseSchedule | None = None,
                 value_regulariser: float = LOCAL_VALUE_REGULARISER, normalisation: str = "reference",
                 identity=None):
        super().__init__()
        if normalisation not in LOSS_NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {LOSS_NORMALISATIONS}, got {normalisation!r}")
        self.local_mapper = local_mapper
        global_mapper.requires_grad_(False).eval()
        self._frozen = (unet, text_encoder, image_encoder, global_mapper)
        self.schedule = schedule or scaled_linear_schedule()
        self.value_regulariser, self.normalisation = value_regulariser, normalisation
        self.identity = identity  # the Taming-Encoder identity term (elite_core.elite.taming), off by default
        self._inputs = _LocalInputs()
        _install(unet, lambda prefix: StageAttnProcessor(*_site_kv(global_mapper, prefix),
                                                         local_kv=_site_kv(local_mapper, prefix),
                                                         local_inputs=self._inputs))

    @property
    def global_mapper(self) -> GlobalMapper:
        return self._frozen[3]

    @contextlib.contextmanager
    def local_inputs(self, tokens: torch.Tensor | None, placeholder_index: torch.Tensor | None, scale: float = 1.0):
        """Within: the UNet's attn2 add the local branch over ``tokens`` (B, 256, D) gated by the
        placeholder at ``placeholder_index`` (B,), times ``scale`` (λ), or no local branch when
        ``tokens`` is None; yields the holder, whose ``values`` collect E · Wv_local of every attn2
        call. The previous inputs are back afterwards."""
        inputs = self._inputs
        previous = inputs.tokens, inputs.index, inputs.scale, inputs.values
        inputs.tokens, inputs.index, inputs.scale, inputs.values = tokens, placeholder_index, float(scale), []
        try:
            yield inputs
        finally:
            inputs.tokens, inputs.index, inputs.scale, inputs.values = previous

    def forward(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, pixels_clip: torch.Tensor,
                pixels_object: torch.Tensor, object_segmentation: torch.Tensor, mask: torch.Tensor,
                input_ids: torch.Tensor, placeholder_index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        unet, text_encoder, image_encoder, global_mapper = self._frozen
        with torch.no_grad():
            word = global_mapper(vision_features(image_encoder, pixels_clip))[:, :1]
            object_features = vision_features(image_encoder, pixels_object)
        tokens = self.local_mapper(object_features) * object_token_mask(object_segmentation)
        with injected_words(text_encoder, placeholder_index, word):
            context = text_encoder(input_ids=input_ids)[0]
        noisy = add_noise(latents, noise, timesteps, self.schedule)
        # The inputs stay set after this call (until the next one): under gradient checkpointing the
        # backward pass runs the attn2 layers again and must see the same tokens.
        inputs = self._inputs
        inputs.tokens, inputs.index, inputs.scale, inputs.values = tokens, placeholder_index, 1.0, []
        predicted = unet(noisy, timesteps, encoder_hidden_states=context).sample
        values = list(inputs.values)
        error = (predicted.float() - noise.float()) ** 2 * mask
        covered = mask.sum(dim=(1, 2, 3))
        if self.normalisation == "per_element":
            covered = covered * error.shape[1] / mask.shape[1]
        data = (error.sum(dim=(1, 2, 3)) / covered).mean()
        regulariser = torch.stack([v.abs().mean() for v in values]).mean() * self.value_regulariser
        loss, parts = data + regulariser, {"masked_mse": data.detach(), "regulariser": regulariser.detach()}
        if self.identity is not None:
            parts["identity"] = self.identity(noisy, predicted, timesteps, pixels_clip, self.schedule)
            loss = loss + parts["identity"]
        return loss, {k: v.detach() for k, v in parts.items()}
