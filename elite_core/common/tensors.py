"""Per-device copies of CPU tensors: a patch keeps its tensors on the CPU (ComfyUI may move, copy or
share it between model clones) and makes each (device, dtype) copy once, on first use."""

from __future__ import annotations

from typing import Callable

import torch


class LazyTensors:
    """CPU tensors with per-(device, dtype) copies made on first use."""

    def __init__(self, make: Callable[[torch.device, torch.dtype], tuple[torch.Tensor, ...]]):
        self._make = make
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = self._make(device, dtype)
        return self._cache[key]
