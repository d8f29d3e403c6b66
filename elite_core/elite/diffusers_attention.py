"""ELITE for a diffusers ``UNet2DConditionModel``: the same maths as the ComfyUI patch.

This is the integration that training and evaluation code use. It needs no diffusers import:
processors follow diffusers' ``processor(attn, hidden_states, encoder_hidden_states, ...)``
convention and only own their extra weights (the local ``to_k``/``to_v``), like diffusers'
IP-Adapter processors.

    elite = install_elite(unet, global_kv, local_kv)
    with elite.inputs(local_tokens, placeholder_index, scale=0.8):
        eps = unet(latents, t, encoder_hidden_states=context).sample

``placeholder_index`` is (batch,) long: the placeholder's token index per row, or -1 for rows that
get no local term (the unconditional half of a CFG batch).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .local_attention import local_term
from .sites import SD1_ATTN2_SITES


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **_) -> torch.Tensor:
    """Plain attention in ComfyUI's convention, (b, n, h * d) in and out."""
    b, n, inner = q.shape
    split = lambda x: x.view(b, -1, heads, inner // heads).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, inner)


def elite_cross_attention(attn, hidden_states, context, to_k, to_v, attention_mask=None, local=None) -> torch.Tensor:
    """One SD1.x attn2 call of a diffusers ``Attention`` with text K/V from ``to_k``/``to_v`` plus,
    when ``local(q, k, heads)`` returns a tensor, ELITE's local term (added before ``to_out``)."""
    if attention_mask is not None or context is None or attn.residual_connection:
        raise ValueError("ELITE's attention processors support SD1.x cross-attention layers only.")
    q = attn.to_q(hidden_states)
    k = to_k(context)
    out = sdpa_attention(q, k, to_v(context), attn.heads)
    extra = local(q, k, attn.heads) if local is not None else None
    if extra is not None:
        out = out + extra
    return attn.to_out[1](attn.to_out[0](out))


@dataclass
class LocalInputs:
    tokens: torch.Tensor  # (1 or batch, L, D)
    index: torch.Tensor  # (batch,) long, -1 = no local term
    scale: float


class _InputsHolder:
    def __init__(self):
        self.current: LocalInputs | None = None


class ELITEAttnProcessor(nn.Module):
    """attn2 processor: text attention through the layer's own projections (holding ELITE's global
    K/V) plus λ · gated local attention over the concept's local tokens."""

    def __init__(self, to_k_local: torch.Tensor, to_v_local: torch.Tensor, holder: _InputsHolder):
        super().__init__()
        out_dim, in_dim = to_k_local.shape
        self.to_k_local = nn.Linear(in_dim, out_dim, bias=False)
        self.to_v_local = nn.Linear(in_dim, out_dim, bias=False)
        with torch.no_grad():
            self.to_k_local.weight.copy_(to_k_local)
            self.to_v_local.weight.copy_(to_v_local)
        self._holder = holder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        return elite_cross_attention(attn, hidden_states, encoder_hidden_states, attn.to_k, attn.to_v, attention_mask,
                                     self._local_term)

    def _local_term(self, q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor | None:
        inputs = self._holder.current
        if inputs is None or inputs.scale == 0.0:
            return None
        index = inputs.index.to(q.device)
        selection = torch.zeros(q.shape[0], k.shape[1], device=q.device, dtype=q.dtype)
        rows = (index >= 0).nonzero().flatten()
        selection[rows, index[rows]] = 1.0
        tokens = inputs.tokens.to(q.device, q.dtype)
        k_local, v_local = self.to_k_local(tokens), self.to_v_local(tokens)
        return local_term(q, k, selection, k_local, v_local, heads, inputs.scale, sdpa_attention)


class ELITEDiffusers:
    """Handle returned by :func:`install_elite`; ``inputs(...)`` sets the local inputs for a call."""

    def __init__(self, holder: _InputsHolder):
        self._holder = holder

    @contextlib.contextmanager
    def inputs(self, tokens: torch.Tensor, placeholder_index: torch.Tensor, scale: float = 0.8):
        previous = self._holder.current
        self._holder.current = LocalInputs(tokens=tokens, index=placeholder_index.long(), scale=float(scale))
        try:
            yield self
        finally:
            self._holder.current = previous


def _attn2(unet, site):
    module = unet
    for part in site.diffusers.split("."):
        module = getattr(module, part)
    return module


def install_elite(unet, global_kv: dict, local_kv: dict | None = None) -> ELITEDiffusers:
    """Load ELITE's global K/V into the 16 attn2 ``to_k``/``to_v`` of ``unet`` and, with
    ``local_kv``, give those layers ELITE processors. Self-attention (attn1) is left alone."""
    holder = _InputsHolder()
    processors = {}
    for site in SD1_ATTN2_SITES:
        attn = _attn2(unet, site)
        wk, wv = global_kv[site.ckpt_prefix]
        with torch.no_grad():
            attn.to_k.weight.copy_(wk)
            attn.to_v.weight.copy_(wv)
        if local_kv is not None:
            lk, lv = local_kv[site.ckpt_prefix]
            processor = ELITEAttnProcessor(lk, lv, holder).to(attn.to_q.weight.device, attn.to_q.weight.dtype)
            processors[f"{site.diffusers}.processor"] = processor
    if processors:
        current = dict(unet.attn_processors)
        current.update(processors)
        unet.set_attn_processor(current)
    return ELITEDiffusers(holder)
