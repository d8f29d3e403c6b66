"""ELITE's patch objects for ComfyUI's SD1.x cross-attention, in ComfyUI's calling convention.

They import nothing from ComfyUI: the optimised attention function is handed in by the adapter.

* :class:`PlaceholderProbe` is an ``attn2_patch``: it sees the raw text context before the K/V
  projections, finds the placeholder token by its fingerprint and leaves a selection in the
  per-block ``extra_options`` for the replace to read.
* :class:`ELITEAttn2Replace` is an ``attn2`` replace for one site: the text attention (or the
  replace it wraps, e.g. another pack's) plus ELITE's local term on the positive rows.

Both are immutable after construction (ComfyUI may deep-copy or share them between clones), and
keep tensors on the CPU, caching device/dtype copies lazily.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..common.tensors import LazyTensors
from .attention_maps import layer_grid
from .local_attention import AttentionFn, local_term, placeholder_gate, placeholder_selection

COND = 0  # cond_or_uncond entry of a positive-prompt chunk


class _SharedPatch:
    """Patch objects are shared, never copied: deepcopy returns self, .to() is lazy."""

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self


class PlaceholderProbe(_SharedPatch):
    def __init__(self, key: str, fingerprints: torch.Tensor, models: Sequence = ()):
        self.key = key
        self._models = list(models)
        cpu = fingerprints.detach().float().cpu()
        self._fingerprints = LazyTensors(lambda device, dtype: (cpu.to(device, dtype),))

    def __call__(self, n, context, value, extra_options):
        (fingerprints,) = self._fingerprints.get(context.device, context.dtype)
        extra_options[self.key] = placeholder_selection(context, fingerprints)
        return n, context, value

    def models(self) -> list:
        return list(self._models)


class ELITEAttn2Replace(_SharedPatch):
    """ELITE cross-attention at one site.

    ``local_tokens`` (1, L, D) and the site's local ``to_k``/``to_v`` weights (C, D) are projected
    once per device and dtype. ``scale`` is λ; the local term is active while
    ``sigma_end <= sigma <= sigma_start`` (checked on the device, no host synchronisation).
    """

    def __init__(
        self,
        key: str,
        local_tokens: torch.Tensor,
        weight_k: Callable[[], torch.Tensor],
        weight_v: Callable[[], torch.Tensor],
        scale: float,
        sigma_start: float,
        sigma_end: float,
        attention: AttentionFn,
        previous: Callable | None = None,
        recorder=None,
        region: torch.Tensor | None = None,
    ):
        self.key = key
        # where the local term applies, (1 or batch, H, W) in [0, 1]; None = everywhere
        self.region = None if region is None else region.detach().float().cpu()
        self._region_cache: dict = {}
        self.recorder = recorder  # an attention_maps.AttentionRecorder, or None (records nothing)
        self.scale = float(scale)
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self._window32 = tuple(float(torch.tensor(x, dtype=torch.float32)) for x in (self.sigma_start, self.sigma_end))
        self.attention = attention
        self.previous = previous
        tokens = local_tokens.detach().float().cpu()

        def project(device, dtype):
            e = tokens.to(device, dtype)
            return (
                torch.matmul(e, weight_k().to(device, dtype).transpose(0, 1)),
                torch.matmul(e, weight_v().to(device, dtype).transpose(0, 1)),
            )

        self._local_kv = LazyTensors(project)

    def _base(self, q, k, v, extra_options):
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return self.attention(
            q, k, v, extra_options["n_heads"],
            attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options,
        )

    def _scale(self, extra_options, device) -> torch.Tensor | float | None:
        """λ at this step, or None where the local term adds nothing (λ = 0, or a step outside the
        window read from CPU sigmas). Sigmas on another device are compared there: a host read
        would synchronise every site, so the branch runs and is multiplied by 0 outside the window."""
        if self.scale == 0.0:
            return None
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return self.scale
        sigma = sigmas.detach()[:1]
        if sigma.device.type == "cpu":  # compared in fp32, as on a device
            value = float(sigma.to(torch.float32))
            start, end = self._window32
            return self.scale if end <= value <= start else None
        sigma = sigma.to(device=device, dtype=torch.float32)
        active = (sigma <= self.sigma_start) & (sigma >= self.sigma_end)
        return active.to(torch.float32) * self.scale

    def __call__(self, q, k, v, extra_options):
        out = self._base(q, k, v, extra_options)
        selection = extra_options.get(self.key)
        chunks = extra_options.get("cond_or_uncond") or [COND]
        if selection is None or COND not in chunks:
            return out
        scale = self._scale(extra_options, q.device)
        if scale is None:
            return out
        heads = extra_options["n_heads"]
        k_local, v_local = self._local_kv.get(q.device, q.dtype)
        rows = q.shape[0] // len(chunks)
        if self.previous is not None:
            out = out.clone(memory_format=torch.contiguous_format)  # another pack's output: do not write into it
        else:
            out = out.contiguous()
        for index, kind in enumerate(chunks):
            if kind == COND:
                part = slice(index * rows, (index + 1) * rows)
                weight = scale
                if self.region is not None:  # (rows or 1, tokens, 1, 1): λ times the region, per position
                    weight = self._region_weights(rows, q.shape[1], extra_options, q.device).unsqueeze(-1) * scale
                local_term(q[part], k[part], selection[part], k_local, v_local, heads, weight, self.attention,
                           into=out[part])
                if self.recorder is not None:
                    self._record(q[part], k[part], selection[part], heads, scale, extra_options)
        return out

    def _region_weights(self, rows: int, tokens: int, extra_options, device) -> torch.Tensor:
        """The region mask at this layer's grid, (rows or 1, tokens, 1), fp32: resized to the latent
        (bilinear), then averaged over each layer position."""
        shape = extra_options["original_shape"]
        grid = layer_grid(tokens, shape[-2], shape[-1])
        key = (grid, tuple(shape[-2:]), device)
        if key not in self._region_cache:
            region = F.interpolate(self.region[:, None], size=tuple(shape[-2:]), mode="bilinear", align_corners=False)
            region = F.adaptive_avg_pool2d(region, grid).flatten(1)[..., None]
            self._region_cache[key] = region.to(device)
        region = self._region_cache[key]
        return region if region.shape[0] in (1, rows) else region[:1]

    def _record(self, q, k, selection, heads, scale, extra_options) -> None:
        """The gate of this call into the recorder, when the local branch is active (opt-in: it
        computes the gate again and synchronises with the device)."""
        if float(scale) == 0.0 or not bool(selection.any()):
            return
        shape = extra_options.get("original_shape")
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.detach().flatten()[0]) if sigmas is not None else None
        self.recorder.add(placeholder_gate(q, k, selection, heads), (shape[-2], shape[-1]), sigma)
