"""A saved ELITE concept: what the encoder computed from a concept image, kept so it need not be
encoded again. Safetensors only (never pickle).

    words           (N, 5, D) float32   the global mapper's words of the N concept images
    local_tokens    (N, 256, D) float32 the local mapper's masked tokens (when there were any)
    preview         (1, h, w, 3) uint8  a small picture of the concept image (optional)
    metadata        format, version, global_mapper / local_mapper (file names) and their
                    fingerprints (a hash of their K/V weights, which sampling needs from the mapper files)

The K/V weights are not copied into the file: they are the mappers' (hundreds of MB); a loaded
concept takes them from the mapper files, which must be the ones it was made with.
"""

from __future__ import annotations

import hashlib
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..common.file_kinds import ELITE_CONCEPT, recognise, refusal
from ..common.files import owned
from .concept import KVWeights
from .sites import SD1_ATTN2_SITES

CONCEPT_FORMAT = "elite-concept"
CONCEPT_VERSION = "1"
FOLDER = "models/elite_concepts/"
_NEEDED = f"ELITE Load Concept reads the files ELITE Save Concept writes into {FOLDER}."


class ConceptFileError(ValueError):
    """A concept file that cannot be used; the message says why."""


def kv_fingerprint(kv: KVWeights) -> str:
    """A short hash of the 16 sites' K/V weights (float32 bytes, in the sites' order)."""
    digest = hashlib.sha256()
    for site in SD1_ATTN2_SITES:
        for weight in kv[site.ckpt_prefix]:
            digest.update(weight.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_concept(path: str, words: torch.Tensor, local_tokens: torch.Tensor | None, preview: torch.Tensor | None,
                  metadata: dict[str, str]) -> None:
    tensors = {"words": words.detach().float().cpu().contiguous()}
    if local_tokens is not None:
        tensors["local_tokens"] = local_tokens.detach().float().cpu().contiguous()
    if preview is not None:
        tensors["preview"] = preview.detach().cpu().contiguous()
    save_file(tensors, path, metadata={"format": CONCEPT_FORMAT, "version": CONCEPT_VERSION, **metadata})


def read_concept(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a concept file, checked."""
    name = os.path.basename(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            is_concept = metadata.get("format") == CONCEPT_FORMAT
            # another kind of file is told by its names and shapes: its tensors are not read
            shapes = {} if is_concept else {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            tensors = owned({key: f.get_tensor(key) for key in f.keys()}) if is_concept else {}
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConceptFileError(f"{path} is not a readable safetensors file ({exc}).") from None
    if not is_concept:
        found = recognise(shapes, metadata)
        if found is not None and found.key != ELITE_CONCEPT:
            raise ConceptFileError(refusal(name, found, "an ELITE concept", _NEEDED))
        raise ConceptFileError(f"'{name}' is not an ELITE concept (made by ELITE Save Concept); it is "
                               f"{metadata.get('format') or 'another kind of safetensors file'}. {_NEEDED}")
    words = tensors.get("words")
    if words is None or words.dim() != 3 or words.shape[1] != 5:
        raise ConceptFileError(f"{path} has no (images, 5, width) words tensor.")
    tokens = tensors.get("local_tokens")
    if tokens is not None and (tokens.dim() != 3 or tokens.shape[0] != words.shape[0] or tokens.shape[2] != words.shape[2]):
        raise ConceptFileError(f"{path}: local_tokens {tuple(tokens.shape)} do not match words {tuple(words.shape)}.")
    return tensors, metadata
