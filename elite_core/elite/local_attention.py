"""ELITE's local attention branch as flat, pure functions (reference ``train_local.py``, docs/reference/elite.md §7).

Per cross-attention layer, with Q from the image, K/V from the text through ELITE's global weights,
and ``E`` the masked local tokens (B, 256, 768) projected by the layer's local ``to_k``/``to_v``::

    P  = softmax(Q Kᵀ · d^-1/2)                  text attention probabilities
    A  = P[..., placeholder] / max(...)          the placeholder's attention map, per sample max
    O  = P V + λ · ((softmax(Q Klᵀ · d^-1/2) ⊙ A[..., None]) Vl)

Because the gate A depends on the query position only, ``(Pl ⊙ A) Vl == A ⊙ (Pl Vl)``: the local
term is an ordinary attention over the local tokens, scaled row-wise by A. So both attentions can
run through an optimised kernel, and only the placeholder column of P is computed explicitly.

Tensors follow ComfyUI's attention convention: (batch, tokens, heads * dim_head).
"""

from __future__ import annotations

from typing import Callable

import torch

AttentionFn = Callable[..., torch.Tensor]  # (q, k, v, heads, **kwargs) -> (b, n, heads * dim_head)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, h * d) -> (b, h, n, d)."""
    b, n, inner = x.shape
    return x.view(b, n, heads, inner // heads).transpose(1, 2)


def placeholder_selection(context: torch.Tensor, fingerprints: torch.Tensor) -> torch.Tensor:
    """One-hot (b, T) of the first context token equal to any fingerprint; all-zero rows when absent.

    ``fingerprints`` (m, width) are the text-encoder outputs at the placeholder, in context's dtype.
    The comparison is exact: conditioning nodes copy these vectors (concat, combine, time ranges,
    padding to a common length) but never change their values.
    """
    matches = (context.unsqueeze(2) == fingerprints.view(1, 1, *fingerprints.shape)).all(-1).any(-1)
    first = matches & (matches.cumsum(dim=-1) == 1)
    return first.to(context.dtype)


def _placeholder_probability(q: torch.Tensor, k: torch.Tensor, selection: torch.Tensor, heads: int) -> torch.Tensor:
    """The placeholder's column of the text attention's softmax, (b, heads, n) fp32.

    exp(logit - log-sum-exp) over one logits buffer (b, h, n, T): the product in q's dtype, then, in
    fp32, times d^-1/2. The placeholder's logit is gathered (not a product over all T); the log-sum-exp
    is reduced as ``torch.logsumexp`` does it (shift by the row max, exp, sum, log, plus the max), in
    place at inference, without its full-size temporary. The max is a constant shift (no gradient
    through it). Rows without a placeholder read token 0; the caller zeroes them.
    """
    qh, kh = split_heads(q, heads), split_heads(k, heads)
    b, h, n, _ = qh.shape
    logits = torch.matmul(qh, kh.transpose(-1, -2)).float().mul_(qh.shape[-1] ** -0.5)  # (b, h, n, T)
    column = selection.argmax(dim=-1).view(b, 1, 1, 1).expand(b, h, n, 1)
    chosen = logits.gather(-1, column).squeeze(-1)
    peak = logits.detach().amax(dim=-1, keepdim=True)
    shifted = logits - peak if logits.requires_grad else logits.sub_(peak)  # the gather's backward keeps logits
    log_sum = shifted.exp_().sum(dim=-1).log() + peak.squeeze(-1)
    return torch.exp(chosen - log_sum)


def placeholder_gate(q: torch.Tensor, k: torch.Tensor, selection: torch.Tensor, heads: int,
                     per_sample: bool = True) -> torch.Tensor:
    """The placeholder's text-attention probability per head and query, normalised by its maximum
    over heads and positions of each sample: (b, heads, n), fp32. Zero for rows without a placeholder.

    ``per_sample=False`` takes one maximum over the whole batch, as the reference's training step does
    (it folds the batch into one tensor); at inference the reference runs one sample at a time.

    Only the placeholder's column of the softmax is formed (logits computed in q's dtype, reduced in
    fp32), see :func:`_placeholder_probability`.
    """
    present = selection.amax(dim=-1).float().view(-1, 1, 1)
    gate = _placeholder_probability(q, k, selection, heads) * present
    peak = gate.amax(dim=(1, 2), keepdim=True) if per_sample else gate.amax()
    return gate / peak.clamp_min(torch.finfo(torch.float32).tiny)


def local_term(
    q: torch.Tensor,
    k: torch.Tensor,
    selection: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    heads: int,
    scale: torch.Tensor | float,
    attention: AttentionFn,
    per_sample: bool = True,
    *,
    into: torch.Tensor | None = None,
) -> torch.Tensor:
    """λ · A ⊙ attention(q, k_local, v_local), in q's dtype: the term ELITE adds before ``to_out``.

    The local attention asks for an fp32 softmax (``attn_precision``), as the gate's is.
    ``per_sample`` is :func:`placeholder_gate`'s. ``scale`` is λ: a number, or a tensor that
    broadcasts against (b, n, 1, 1) (e.g. λ times a per-position region weight).

    With ``into`` (b, n, heads * dim_head, contiguous, no gradient), the term is formed in the local
    attention's own buffer and added to ``into`` in place, and ``into`` is returned; otherwise the term
    is a new tensor. A product then a sum, not a fused multiply-add: the rounding stays that of the
    reference's ``hidden + term``.
    """
    b, n, inner = q.shape
    gate = placeholder_gate(q, k, selection, heads, per_sample)  # (b, h, n)
    if k_local.shape[0] != b:
        k_local, v_local = k_local.expand(b, -1, -1), v_local.expand(b, -1, -1)
    local = attention(q, k_local, v_local, heads, attn_precision=torch.float32).view(b, n, heads, inner // heads)
    weight = (gate.transpose(1, 2).unsqueeze(-1) * scale).to(q.dtype)  # (b, n, h, 1)
    if into is None:
        return (local * weight).reshape(b, n, inner)
    term = local * weight if local.requires_grad else local.mul_(weight)  # the attention's backward keeps local
    into.view(b, n, heads, inner // heads).add_(term)
    return into
