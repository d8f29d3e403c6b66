"""CatVersion's prefixed CLIP-L text encoder, restated from the reference document with explicit
matmuls and softmax (no ComfyUI code, no attention kernels): docs/reference/catversion.md §2-§4.

* The flat official vector is [K9|V9|K10|V10|K11|V11] (P = 1): block 2j is layer 9+j's key row,
  block 2j+1 its value row.
* In a prefixed layer the prefix key/value come first; every query row adds +1.0 to the prefix
  logit (the authors' widened causal mask); the softmax runs over P + 77 keys.
* Output: final LayerNorm of the last layer run (layer 11 unless the CLIP stops earlier).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREFIX = "clip_l.transformer.text_model."


def official_flat_to_layers(flat: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    blocks = flat.reshape(6, 768)
    return {9 + j: (blocks[2 * j : 2 * j + 1], blocks[2 * j + 1 : 2 * j + 2]) for j in range(3)}


def _layer_norm(x, state, name):
    return F.layer_norm(x, (x.shape[-1],), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)


def _linear(x, state, name):
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def reference_text_encoder(state: dict[str, torch.Tensor], token_ids: torch.Tensor,
                           prefixes: dict[int, list[tuple[torch.Tensor, torch.Tensor, float]]],
                           last_layer: int = 11) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(final output (B, 77, 768), [output of each layer run]).

    ``prefixes[layer]`` lists (key (P, 768), value (P, 768), logit bias) entries, concatenated in order.
    """
    state = {k[len(PREFIX):]: v.double() for k, v in state.items() if k.startswith(PREFIX)}
    heads, head_dim = 12, 64
    batch, tokens = token_ids.shape
    x = state["embeddings.token_embedding.weight"][token_ids] + state["embeddings.position_embedding.weight"][:tokens]
    causal = torch.full((tokens, tokens), -torch.finfo(torch.float32).max, dtype=torch.float64).triu(1)
    outputs = []
    for i in range(last_layer + 1):
        name = f"encoder.layers.{i}"
        h = _layer_norm(x, state, f"{name}.layer_norm1")
        q, k, v = (_linear(h, state, f"{name}.self_attn.{p}_proj") for p in "qkv")
        mask = causal
        entries = prefixes.get(i, [])
        if entries:
            k = torch.cat([torch.cat([e[0].double() for e in entries]).expand(batch, -1, -1), k], dim=1)
            v = torch.cat([torch.cat([e[1].double() for e in entries]).expand(batch, -1, -1), v], dim=1)
            bias = torch.cat([torch.full((tokens, e[0].shape[0]), float(e[2]), dtype=torch.float64) for e in entries], dim=1)
            mask = torch.cat([bias, causal], dim=1)
        qh = q.view(batch, tokens, heads, head_dim).transpose(1, 2)
        kh = k.view(batch, -1, heads, head_dim).transpose(1, 2)
        vh = v.view(batch, -1, heads, head_dim).transpose(1, 2)
        logits = qh @ kh.transpose(-1, -2) * head_dim ** -0.5 + mask
        attn = torch.softmax(logits, dim=-1) @ vh
        x = x + _linear(attn.transpose(1, 2).reshape(batch, tokens, heads * head_dim), state, f"{name}.self_attn.out_proj")
        h = _layer_norm(x, state, f"{name}.layer_norm2")
        h = _linear(h, state, f"{name}.mlp.fc1")
        x = x + _linear(h * torch.sigmoid(1.702 * h), state, f"{name}.mlp.fc2")
        outputs.append(x.float())
    return _layer_norm(x, state, "final_layer_norm").float(), outputs
