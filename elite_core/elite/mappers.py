"""ELITE's global and local mapping networks, with state dicts in the official checkpoint layout.

Both networks hold five pairs of MLPs (``mapping_i`` for the CLS token, ``mapping_patch_i`` for the
256 patch tokens, one pair per CLIP vision layer) plus one ``to_k``/``to_v`` linear per UNet
cross-attention site. Widths are not hard-coded: :func:`widths_from_state_dict` reads them from a
checkpoint, so the official 1024 -> 768 mappers and small test mappers share one code path.

Forward passes (Wei et al., ICCV 2023; reference code ``train_global.py``/``train_local.py``):

* global: ``word_i = mapping_i(cls_i) + mean_p mapping_patch_i(patch_{i,p})``  -> (B, 5, D_text)
* local:  ``E = mean_i (mapping_i(cls_i) + mapping_patch_i(patch_i))``       -> (B, 256, D_text)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .sites import SD1_ATTN2_SITES, AttnSite

NUM_WORDS = 5  # one word per CLIP vision layer used (blocks 24, 4, 8, 12, 16)
MLP_LINEAR_INDICES = (0, 3, 6)
MLP_NORM_INDICES = (1, 4)


@dataclass(frozen=True)
class MapperWidths:
    """Layer widths of a mapper; the official checkpoints have (1024, 1024, 768, 320/640/1280)."""

    input_dim: int  # CLIP vision width
    hidden_dim: int
    output_dim: int  # CLIP text token-embedding width
    kv_dims: tuple[int, ...]  # output width of to_k/to_v, one per site in SD1_ATTN2_SITES order


OFFICIAL_WIDTHS = MapperWidths(
    input_dim=1024,
    hidden_dim=1024,
    output_dim=768,
    kv_dims=tuple(320 * site.base_channels_mult for site in SD1_ATTN2_SITES),
)


def _mlp(widths: MapperWidths) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(widths.input_dim, widths.hidden_dim),
        nn.LayerNorm(widths.hidden_dim),
        nn.LeakyReLU(),
        nn.Linear(widths.hidden_dim, widths.hidden_dim),
        nn.LayerNorm(widths.hidden_dim),
        nn.LeakyReLU(),
        nn.Linear(widths.hidden_dim, widths.output_dim),
    )


def _registration_order() -> list[AttnSite]:
    # The reference registers K/V in named_modules order: down blocks, up blocks, mid block last.
    return sorted(SD1_ATTN2_SITES, key=lambda site: site.diffusers.startswith("mid_block"))


class _MapperBase(nn.Module):
    """The MLPs, and (``with_kv``) the per-site K/V linears that complete the checkpoint layout.

    Inference keeps the K/V weights elsewhere (weight patches, or :class:`SiteKV` while sampling),
    so runtime mappers are built without them.
    """

    def __init__(self, widths: MapperWidths, with_kv: bool = True):
        super().__init__()
        self.widths = widths
        for i in range(NUM_WORDS):
            setattr(self, f"mapping_{i}", _mlp(widths))
            setattr(self, f"mapping_patch_{i}", _mlp(widths))
        if not with_kv:
            return
        dims = dict(zip(SD1_ATTN2_SITES, widths.kv_dims))
        for site in _registration_order():
            setattr(self, f"{site.ckpt_prefix}_to_k", nn.Linear(widths.output_dim, dims[site], bias=False))
            setattr(self, f"{site.ckpt_prefix}_to_v", nn.Linear(widths.output_dim, dims[site], bias=False))

    def cls_mlp(self, i: int) -> nn.Sequential:
        return getattr(self, f"mapping_{i}")

    def patch_mlp(self, i: int) -> nn.Sequential:
        return getattr(self, f"mapping_patch_{i}")

    def _check_features(self, features: list[torch.Tensor]) -> None:
        if len(features) != NUM_WORDS:
            raise ValueError(f"ELITE mappers take {NUM_WORDS} CLIP vision layers, got {len(features)}.")
        for f in features:
            if f.dim() != 3 or f.shape[-1] != self.widths.input_dim:
                raise ValueError(
                    f"CLIP vision features of shape {tuple(f.shape)} do not fit this mapper, which "
                    f"expects (batch, tokens, {self.widths.input_dim})."
                )


class GlobalMapper(_MapperBase):
    """Maps five CLIP vision layers of the whole image to five word embeddings (B, 5, D_text)."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        self._check_features(features)
        words = []
        for i, f in enumerate(features):
            cls_term = self.cls_mlp(i)(f[:, :1])
            patch_term = self.patch_mlp(i)(f[:, 1:]).mean(dim=1, keepdim=True)
            words.append(cls_term + patch_term)
        return torch.cat(words, dim=1)


class LocalMapper(_MapperBase):
    """Maps five CLIP vision layers of the object image to one token per patch (B, 256, D_text)."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        self._check_features(features)
        per_layer = [self.cls_mlp(i)(f[:, :1]) + self.patch_mlp(i)(f[:, 1:]) for i, f in enumerate(features)]
        return torch.stack(per_layer, dim=0).mean(dim=0)


def expected_keys(widths: MapperWidths) -> dict[str, tuple[int, ...]]:
    """Every key of a mapper state dict with its shape, in checkpoint order."""
    with torch.device("meta"):
        module = _MapperBase(widths)
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def build_mapper(kind: type[_MapperBase], state_dict: dict[str, torch.Tensor], widths: MapperWidths,
                 with_kv: bool = True):
    """Instantiate ``kind`` around ``state_dict`` without random initialisation (tensors are adopted).

    With ``with_kv=False`` only the MLPs are built and the K/V entries of ``state_dict`` are ignored.
    """
    with torch.device("meta"):
        module = kind(widths, with_kv=with_kv)
    if not with_kv:
        state_dict = {k: v for k, v in state_dict.items() if k.startswith("mapping_")}
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def kv_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The per-site (to_k, to_v) weights of a mapper checkpoint, keyed by the site's checkpoint prefix."""
    return {site.ckpt_prefix: (state_dict[site.ckpt_to_k], state_dict[site.ckpt_to_v]) for site in SD1_ATTN2_SITES}


class SiteKV(nn.Module):
    """Per-site K/V weights as a module, so ComfyUI's memory manager can load and offload them."""

    def __init__(self, kv: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.to_k = nn.ParameterDict({p: nn.Parameter(w[0], requires_grad=False) for p, w in kv.items()})
        self.to_v = nn.ParameterDict({p: nn.Parameter(w[1], requires_grad=False) for p, w in kv.items()})

    def weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {p: (self.to_k[p], self.to_v[p]) for p in self.to_k}
