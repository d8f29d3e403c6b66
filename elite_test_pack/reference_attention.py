"""An independent re-statement of ELITE's modified cross-attention (docs/reference/elite.md §7), written
the way the reference code computes it: explicit matmuls and softmax, heads folded batch-major,
one image at a time (the reference runs the conditional pass with batch 1).

Used as the ground truth in the parity tests; it shares no code with the pack.
"""

from __future__ import annotations

import types

import torch


def reshape_heads_to_batch_dim(tensor, head_size):
    batch_size, seq_len, dim = tensor.shape
    tensor = tensor.reshape(batch_size, seq_len, head_size, dim // head_size)
    return tensor.permute(0, 2, 1, 3).reshape(batch_size * head_size, seq_len, dim // head_size)


def reshape_batch_dim_to_heads(tensor, head_size):
    batch_size, seq_len, dim = tensor.shape
    tensor = tensor.reshape(batch_size // head_size, head_size, seq_len, dim)
    return tensor.permute(0, 2, 1, 3).reshape(batch_size // head_size, seq_len, dim * head_size)


def elite_cross_attention_one(hidden_states, context, to_q, to_k_global, to_v_global, heads,
                              local=None, to_k_local=None, to_v_local=None, index=None, llambda=1.0):
    """One sample (batch 1). ``local`` (1, L, D) or None; ``index`` the placeholder token index."""
    query = reshape_heads_to_batch_dim(hidden_states @ to_q.T, heads)
    key = reshape_heads_to_batch_dim(context @ to_k_global.T, heads)
    value = reshape_heads_to_batch_dim(context @ to_v_global.T, heads)
    scale = query.shape[-1] ** -0.5
    attention_scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    attention_probs = attention_scores.softmax(dim=-1)
    hidden = torch.matmul(attention_probs, value)
    if local is not None:
        key_local = reshape_heads_to_batch_dim(local @ to_k_local.T, heads)
        value_local = reshape_heads_to_batch_dim(local @ to_v_local.T, heads)
        attention_scores_local = torch.matmul(query, key_local.transpose(-1, -2)) * scale
        attention_probs_local = attention_scores_local.softmax(dim=-1)
        attention_probs_ = attention_probs[:, :, index]  # (heads, N): the placeholder's column
        attention_probs_ = attention_probs_ / attention_probs_.max()
        hidden = hidden + llambda * torch.matmul(attention_probs_local * attention_probs_[..., None], value_local)
    return reshape_batch_dim_to_heads(hidden, heads)


def elite_cross_attention(hidden_states, context, weights, heads, local=None, indices=None, llambda=1.0):
    """Rows one by one; ``indices[b]`` is the placeholder index of row b, or None (no local term)."""
    rows = []
    for b in range(hidden_states.shape[0]):
        use_local = local is not None and indices[b] is not None
        rows.append(elite_cross_attention_one(
            hidden_states[b:b + 1], context[b:b + 1], weights["to_q"], weights["to_k_global"],
            weights["to_v_global"], heads,
            local=local if use_local else None, to_k_local=weights.get("to_k_local"),
            to_v_local=weights.get("to_v_local"), index=indices[b] if use_local else None, llambda=llambda,
        ))
    hidden = torch.cat(rows)
    return hidden @ weights["to_out_weight"].T + weights["to_out_bias"]


def install_reference(unet, sites, global_kv, local_kv=None, local=None, indices=None, llambda=1.0):
    """Make every attn2 of a ComfyUI UNet compute the reference maths (like the reference's
    monkey-patched CrossAttention.__call__). Weights are read from the modules and the given dicts."""
    for site in sites:
        module = unet
        for part in site.comfy_prefix[len("diffusion_model."):].split("."):
            module = getattr(module, part)
        weights = {
            "to_q": module.to_q.weight.detach().float(),
            "to_k_global": global_kv[site.ckpt_prefix][0].float(),
            "to_v_global": global_kv[site.ckpt_prefix][1].float(),
            "to_out_weight": module.to_out[0].weight.detach().float(),
            "to_out_bias": module.to_out[0].bias.detach().float(),
        }
        if local_kv is not None:
            weights["to_k_local"] = local_kv[site.ckpt_prefix][0].float()
            weights["to_v_local"] = local_kv[site.ckpt_prefix][1].float()

        def forward(self, x, context=None, value=None, mask=None, transformer_options={}, _w=weights):
            return elite_cross_attention(x, context, _w, self.heads, local, indices, llambda)

        module.forward = types.MethodType(forward, module)
