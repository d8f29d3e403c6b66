"""A saved ELITE concept: what the encoder computed from a concept image, kept so it need not be
encoded again. Safetensors only (never pickle).

    words           (N, 5, D) float32   the global mapper's words of the N >= 1 concept images
    local_tokens    (N, 256, D) float32 the local mapper's masked tokens (when there were any)
    preview         (1, h, w, 3) uint8  a small picture of the concept image (optional)
    metadata        format, version, global_mapper / local_mapper (file names) and their
                    fingerprints (a hash of their K/V weights, which sampling needs from the mapper files)

The K/V weights are not copied into the file: they are the mappers' (hundreds of MB); a loaded
concept takes them from the mapper files, which must be the ones it was made with.
"""

from __future__ import annotations

import hashlib
import logging
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..common import files
from ..common.file_kinds import ELITE_CONCEPT, recognise, refusal
from .concept import LOCAL_TOKENS, WORDS_PER_IMAGE, KVWeights
from .sites import SD1_ATTN2_SITES

CONCEPT_FORMAT = "elite-concept"
CONCEPT_VERSION = "1"
FOLDER = "models/elite_concepts/"
CONCEPT_EXTENSIONS = (".safetensors",)  # what ELITE Load Concept lists and opens
_NEEDED = f"ELITE Load Concept reads the files ELITE Save Concept writes into {FOLDER}."
SAVE_AGAIN = (f"Save the concept again (ELITE Encoder on its photo, then ELITE Save Concept), or copy the file "
              f"again into {FOLDER}.")

log = logging.getLogger("elite")


class ConceptFileError(files.TensorFileError):
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
    """The tensors and metadata of a concept file, checked: its header before anything is read, then
    every tensor it carries (see the module's table). Each refusal names the file and says what to do."""
    name = os.path.basename(path)
    extension = os.path.splitext(name)[1].lower()
    if extension not in CONCEPT_EXTENSIONS:
        raise ConceptFileError(wrong_extension_message(name))
    files.safetensors_metadata(path, FOLDER, ConceptFileError, again=SAVE_AGAIN)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            is_concept = metadata.get("format") == CONCEPT_FORMAT
            # another kind of file is told by its names and shapes: its tensors are not read
            shapes = {} if is_concept else {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            tensors = files.owned({key: f.get_tensor(key) for key in f.keys()}) if is_concept else {}
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConceptFileError(f"'{name}' cannot be read as a safetensors file ({exc}). {SAVE_AGAIN}") from None
    if not is_concept:
        found = recognise(shapes, metadata)
        if found is not None and found.key != ELITE_CONCEPT:
            raise ConceptFileError(refusal(name, found, "an ELITE concept", _NEEDED))
        raise ConceptFileError(f"'{name}' is not an ELITE concept (made by ELITE Save Concept); it is "
                               f"{metadata.get('format') or 'another kind of safetensors file'}. {_NEEDED}")
    problem = _content_problem(tensors)
    if problem:
        raise ConceptFileError(f"'{name}' is a damaged ELITE concept: {problem}. {SAVE_AGAIN}")
    preview = tensors.get("preview")
    if preview is not None and (preview.dtype != torch.uint8 or preview.dim() != 4 or preview.shape[0] != 1
                                or preview.shape[-1] != 3 or 0 in preview.shape):
        log.warning("ELITE: the preview picture in '%s' is %s %s, not (1, height, width, 3) uint8; the concept is "
                    "loaded without it.", name, str(preview.dtype).replace("torch.", ""), tuple(preview.shape))
        del tensors["preview"]
    tensors["words"] = tensors["words"].float()
    if "local_tokens" in tensors:
        tensors["local_tokens"] = tensors["local_tokens"].float()
    return tensors, metadata


def wrong_extension_message(name: str) -> str:
    """Why ELITE Load Concept does not open ``name`` (it is not a .safetensors file)."""
    extension = os.path.splitext(name)[1].lower() or "no extension"
    pickle = (" A pickle (.pt, .pth, .bin, .ckpt) is never opened: loading one can run code."
              if extension in files.PICKLE_EXTENSIONS else "")
    return (f"'{name}' is not a concept file ELITE Load Concept opens: it has {extension}, and concepts are the "
            f".safetensors files ELITE Save Concept writes into {FOLDER}.{pickle}")


def _shape(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"


def _tensor_problem(label: str, tensor: torch.Tensor | None, per_image: int, expected: str) -> str | None:
    """What is wrong with the (images, ``per_image``, width) floating-point tensor ``label``, or None."""
    if tensor is None:
        return f"it has no '{label}' tensor (expected {expected})"
    if not tensor.is_floating_point():
        return f"its {label} are {_shape(tensor)}, not floating-point numbers (expected {expected})"
    if tensor.dim() != 3 or tensor.shape[2] == 0:
        return f"its {label} are {_shape(tensor)}; expected {expected}"
    if tensor.shape[1] != per_image:
        return f"its {label} are {tensor.shape[1]} per image {_shape(tensor)}; expected {expected}"
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        return (f"its {label} hold {bad:,} NaN or infinite value{'s' if bad > 1 else ''} (of {tensor.numel():,}); "
                "they must all be finite numbers")
    return None


def _content_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with a concept file's words and local tokens, or None."""
    words = tensors.get("words")
    expected = f"(images, {WORDS_PER_IMAGE}, width) floats, e.g. (1, {WORDS_PER_IMAGE}, 768)"
    problem = _tensor_problem("words", words, WORDS_PER_IMAGE, expected)
    if problem:
        return problem
    if words.shape[0] == 0:
        return f"it holds 0 images (words {_shape(words)}); a concept has the words of at least one image"
    tokens = tensors.get("local_tokens")
    if tokens is None:
        return None
    images, width = words.shape[0], words.shape[2]
    problem = _tensor_problem("local tokens", tokens, LOCAL_TOKENS,
                              f"({images}, {LOCAL_TOKENS}, {width}): {LOCAL_TOKENS} per image, as wide as its words")
    if problem:
        return problem
    if tokens.shape[0] != images or tokens.shape[2] != width:
        return (f"its local tokens {_shape(tokens)} do not match its words {_shape(words)}: expected "
                f"({images}, {LOCAL_TOKENS}, {width}), the same images and width")
    return None
