"""ELITE's training objectives (Wei et al., ICCV 2023; elite-reference §9.2) on diffusers/transformers
models: the text injection with the sequence shift, the trainable global K/V in the UNet's 16
cross-attention layers, and the global stage's loss. Plain torch: the models are handed in.

Global stage, per batch (the reference ``train_global.py``)::

    words = GlobalMapper(CLIP vision blocks 24, 4, 8, 12, 16 of the image)      (B, 5, 768), trainable
    c     = CLIP text(prompt with the 5 words at S, later tokens shifted right by 4)
    eps^  = UNet(z_t, t, c) with to_k/to_v of every attn2 replaced by the mapper's K/V (trainable)
    L     = mean_b mean_{c,h,w} (eps^ - eps)^2 + 0.01 * mean |words|

Everything else (UNet, both CLIPs, VAE) is frozen. The K/V copies start from the UNet's own.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .clip_input import select_elite_layers
from .diffusers_attention import sdpa_attention
from .mappers import GlobalMapper, MapperWidths
from .noise_schedule import NoiseSchedule, add_noise, scaled_linear_schedule
from .sites import SD1_ATTN2_SITES

GLOBAL_WORD_REGULARISER = 0.01
LATENT_SCALE = 0.18215


def shift_inject(token_embeddings: torch.Tensor, index: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, T, D) with ``words`` (B, L, D) at ``index[b]``: the placeholder is replaced,
    the tokens after it move right by L - 1 and the last L - 1 of the T fall off (elite-reference §6)."""
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


class GlobalKVProcessor:
    """attn2 processor that projects the text with ELITE's global K/V (held by reference, e.g. a
    mapper's trainable ``{site}_to_k``/``_to_v``) instead of the layer's own ``to_k``/``to_v``."""

    def __init__(self, to_k: nn.Linear, to_v: nn.Linear):
        self.to_k, self.to_v = to_k, to_v

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None or encoder_hidden_states is None or attn.residual_connection:
            raise ValueError("GlobalKVProcessor supports SD1.x cross-attention layers only.")
        q = attn.to_q(hidden_states)
        out = sdpa_attention(q, self.to_k(encoder_hidden_states), self.to_v(encoder_hidden_states), attn.heads)
        return attn.to_out[1](attn.to_out[0](out))


def new_global_mapper(unet: nn.Module, widths: MapperWidths, seed: int) -> GlobalMapper:
    """A global mapper to train: seeded default init of the MLPs, K/V copied from the UNet's attn2."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mapper = GlobalMapper(widths, with_kv=True)
    with torch.no_grad():
        for prefix, attn in attn2_modules(unet).items():
            getattr(mapper, f"{prefix}_to_k").weight.copy_(attn.to_k.weight)
            getattr(mapper, f"{prefix}_to_v").weight.copy_(attn.to_v.weight)
    return mapper


class GlobalStage(nn.Module):
    """The global stage's loss. The mapper (MLPs and K/V) is the only parameter; the frozen models
    are held outside the module's parameters. Installs :class:`GlobalKVProcessor` on the UNet's attn2."""

    def __init__(self, mapper: GlobalMapper, unet: nn.Module, text_encoder: nn.Module, image_encoder: nn.Module,
                 schedule: NoiseSchedule | None = None, word_regulariser: float = GLOBAL_WORD_REGULARISER):
        super().__init__()
        self.mapper = mapper
        self._frozen = (unet, text_encoder, image_encoder)
        self.schedule = schedule or scaled_linear_schedule()
        self.word_regulariser = word_regulariser
        processors = dict(unet.attn_processors)
        for site in SD1_ATTN2_SITES:
            processors[f"{site.diffusers}.processor"] = GlobalKVProcessor(
                getattr(mapper, f"{site.ckpt_prefix}_to_k"), getattr(mapper, f"{site.ckpt_prefix}_to_v"))
        unet.set_attn_processor(processors)

    def forward(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, pixels_clip: torch.Tensor,
                input_ids: torch.Tensor, placeholder_index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        unet, text_encoder, image_encoder = self._frozen
        with torch.no_grad():
            features = vision_features(image_encoder, pixels_clip)
        words = self.mapper(features)
        with injected_words(text_encoder, placeholder_index, words):
            context = text_encoder(input_ids=input_ids)[0]
        predicted = unet(add_noise(latents, noise, timesteps, self.schedule), timesteps,
                         encoder_hidden_states=context).sample
        mse = F.mse_loss(predicted.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
        regulariser = words.abs().mean() * self.word_regulariser
        return mse + regulariser, {"mse": mse.detach(), "regulariser": regulariser.detach()}
