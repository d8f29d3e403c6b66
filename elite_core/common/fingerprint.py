"""Content fingerprints: one SHA-256 over a sequence of fields (text, plain values, exact tensors,
and fixed samples of large tensors), to find again a file that was made from the same inputs.

Every field is tagged and length-prefixed, so two different sequences of fields never feed the hash
the same bytes. Two kinds of tensor field:

* :meth:`Fingerprint.add_tensor`: dtype, shape and every byte (the photos a concept is learned from);
* :meth:`Fingerprint.add_tensor_sample`: dtype, shape and ``samples`` elements at fixed, evenly
  spaced positions of the flattened tensor, first and last included (multi-gigabyte model weights:
  a fine-tune, a merge or a different checkpoint changes practically every weight, so a few hundred
  of each tensor tell them apart, while reading a few megabytes instead of gigabytes). A change
  confined to weights between the sampled positions is not seen.
"""

from __future__ import annotations

import hashlib
import json

import torch

TENSOR_SAMPLES = 256  # elements sampled from each large tensor


def _bytes_of(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a CPU tensor in its own dtype (bfloat16 and float8 included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """An ordinary tensor with the values of ``tensor`` (a quantized weight is dequantized)."""
    if type(tensor) is not torch.Tensor and not isinstance(tensor, torch.nn.Parameter) and hasattr(tensor, "dequantize"):
        return tensor.dequantize()
    return tensor


def sample_positions(numel: int, samples: int) -> torch.Tensor:
    """``samples`` evenly spaced positions in ``range(numel)``, first and last included (all of them
    when the tensor is not larger)."""
    if numel <= samples:
        return torch.arange(numel)
    return torch.arange(samples, dtype=torch.int64) * (numel - 1) // (samples - 1)


class Fingerprint:
    """A SHA-256 fed field by field; ``kind`` names what is fingerprinted (and its version)."""

    def __init__(self, kind: str):
        self._hash = hashlib.sha256()
        self.add_text(kind)

    def _field(self, tag: bytes, payload: bytes) -> None:
        self._hash.update(tag + len(payload).to_bytes(8, "little") + payload)

    def add_text(self, text: str) -> None:
        self._field(b"s", str(text).encode("utf-8"))

    def add_value(self, value) -> None:
        """A JSON-able value (numbers, text, booleans, None, lists, dicts with text keys), canonically."""
        self._field(b"j", json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8"))

    def _tensor_header(self, tensor: torch.Tensor) -> None:
        self._field(b"t", f"{tensor.dtype}|{tuple(tensor.shape)}".encode("utf-8"))

    def add_tensor(self, tensor: torch.Tensor) -> None:
        """Dtype, shape and every value of ``tensor``."""
        tensor = _plain(tensor)
        self._tensor_header(tensor)
        self._field(b"b", _bytes_of(tensor))

    def add_tensor_sample(self, tensor: torch.Tensor, samples: int = TENSOR_SAMPLES) -> None:
        """Dtype, shape and ``samples`` evenly spaced values of ``tensor`` (all of a small one).
        A tensor without data (on the meta device) gives its dtype and shape only."""
        tensor = _plain(tensor)
        self._tensor_header(tensor)
        if tensor.device.type == "meta":
            self._field(b"m", b"")
            return
        flat = tensor.detach().reshape(-1)
        picked = flat[sample_positions(flat.numel(), samples).to(flat.device)]
        self._field(b"b", _bytes_of(picked))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
