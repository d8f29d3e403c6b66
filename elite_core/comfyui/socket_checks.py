"""What each socket of the pack's nodes must carry, checked once when a node starts.

A node upstream that misbehaves (a custom node declaring CLIP but returning a string, a uint8 IMAGE)
would otherwise fail deep inside ComfyUI or torch with "'str' object has no attribute 'tokenize'".
:func:`check_node_inputs` reads the node's V3 schema, looks up each input's socket type in
:data:`SOCKETS` and refuses a value of the wrong kind with :class:`InputError`, naming the node, the
input and what it received. Optional inputs may be None. Values are only looked at, never copied.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

import comfy.clip_vision
import comfy.model_patcher
import comfy.sd

from ..catversion.prefix import CatVersionPrefix
from ..common.checks import InputError, image_layout_problem, mask_layout_problem
from ..elite.concept import ELITEConcept
from ..elite.mappers import GlobalMapper, LocalMapper
from .elite import LoadedMapper

WIRING_HINT = "Check what is wired into it."


@dataclass(frozen=True)
class Socket:
    """One socket type: what the message calls it and how a value is judged.

    ``problem(value)`` returns None for a usable value; otherwise why it is not usable, or "" when
    the received value's description says enough.
    """

    expected: str
    problem: Callable[[object], str | None]


# --------------------------------------------------------------------------- ComfyUI's objects


def _comfy_class(module, name: str) -> type | None:
    """A ComfyUI class by name, or None where the running version has moved it (then only the duck
    test below applies)."""
    found = getattr(module, name, None)
    return found if isinstance(found, type) else None


MODEL_PATCHER = _comfy_class(comfy.model_patcher, "ModelPatcher")
CLIP_CLASS = _comfy_class(comfy.sd, "CLIP")
VAE_CLASS = _comfy_class(comfy.sd, "VAE")
CLIP_VISION_CLASS = _comfy_class(comfy.clip_vision, "ClipVisionModel")


def _has_methods(value, *names: str) -> bool:
    return all(callable(getattr(value, name, None)) for name in names)


def _object_check(cls: type | None, *methods: str, attributes: tuple[str, ...] = ()):
    """An instance of ``cls``, or (wrappers of other packs) an object with the methods and attributes
    the pack uses."""

    def problem(value) -> str | None:
        if cls is not None and isinstance(value, cls):
            return None
        if _has_methods(value, *methods) and all(hasattr(value, name) for name in attributes):
            return None
        return ""

    return problem


# --------------------------------------------------------------------------- tensors and containers


def _image_problem(value) -> str | None:
    return image_layout_problem(value) if isinstance(value, torch.Tensor) else ""


def _mask_problem(value) -> str | None:
    return mask_layout_problem(value) if isinstance(value, torch.Tensor) else ""


def _latent_problem(value) -> str | None:
    if not isinstance(value, Mapping):
        return ""
    if not isinstance(value.get("samples"), torch.Tensor):
        return "a LATENT is a dict whose 'samples' is a tensor"
    return None


def _conditioning_problem(value) -> str | None:
    if not isinstance(value, (list, tuple)):
        return ""
    for index, item in enumerate(value):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], torch.Tensor)
                and isinstance(item[1], Mapping)):
            return f"CONDITIONING is a list of [tensor, dict] pairs, and its item {index} is {describe(item)}"
    return None


# --------------------------------------------------------------------------- the pack's objects


def _mapper_check(kind: type):
    def problem(value) -> str | None:
        if isinstance(value, LoadedMapper) and isinstance(value.module, kind):
            return None
        return ""

    return problem


def _instance_check(cls: type):
    return lambda value: None if isinstance(value, cls) else ""


# --------------------------------------------------------------------------- widgets (linked values)


def _whole_number(value) -> str | None:
    return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else ""


def _number(value) -> str | None:
    return None if isinstance(value, numbers.Real) and not isinstance(value, bool) else ""


SOCKETS: dict[str, Socket] = {
    "MODEL": Socket("a MODEL (from Load Checkpoint)",
                    _object_check(MODEL_PATCHER, "clone", attributes=("model", "model_options"))),
    "CLIP": Socket("a CLIP (from Load Checkpoint or Load CLIP)",
                   _object_check(CLIP_CLASS, "tokenize", "encode_from_tokens")),
    "VAE": Socket("a VAE (from Load Checkpoint or Load VAE)", _object_check(VAE_CLASS, "encode", "decode")),
    "CLIP_VISION": Socket("a CLIP_VISION (from Load CLIP Vision)", _object_check(CLIP_VISION_CLASS, "encode_image")),
    "CONDITIONING": Socket("a CONDITIONING (from CLIP Text Encode or ELITE Conditioning)", _conditioning_problem),
    "IMAGE": Socket("an IMAGE (from Load Image or VAE Decode)", _image_problem),
    "MASK": Socket("a MASK (from Load Image or ELITE Prepare Concept)", _mask_problem),
    "LATENT": Socket("a LATENT (from a sampler)", _latent_problem),
    "ELITE_GLOBAL_MAPPER": Socket("an ELITE global mapper (from ELITE Global Mapper Loader)", _mapper_check(GlobalMapper)),
    "ELITE_LOCAL_MAPPER": Socket("an ELITE local mapper (from ELITE Local Mapper Loader)", _mapper_check(LocalMapper)),
    "ELITE_CONCEPT": Socket("an ELITE concept (from ELITE Encoder or ELITE Load Concept)", _instance_check(ELITEConcept)),
    "CATVERSION_ADAPTER": Socket("a CatVersion adapter (from CatVersion Adapter Loader or CatVersion Train Concept)",
                                 _instance_check(CatVersionPrefix)),
    "STRING": Socket("a text (STRING)", _instance_check(str)),
    "COMBO": Socket("one of its listed choices (a text)", _instance_check(str)),
    "INT": Socket("a whole number (INT)", _whole_number),
    "FLOAT": Socket("a number (FLOAT)", _number),
    "BOOLEAN": Socket("true or false (BOOLEAN)", _instance_check(bool)),
}


# --------------------------------------------------------------------------- messages


def _article(text: str) -> str:
    vowel = text[:1].lower() in "aeiou" and not text.startswith("uint")  # "a uint8", "an int8"
    return f"an {text}" if vowel else f"a {text}"


def _short_repr(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(value) -> str:
    """What a value is, in a few words: its type and enough of it to recognise it."""
    if value is None:
        return "nothing (None)"
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{_article(dtype)} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (str, bytes, numbers.Number)):
        return f"{_article(type(value).__name__)} ({_short_repr(value)})"
    if isinstance(value, Mapping):
        if not value:
            return "an empty dict"
        keys = ", ".join(_short_repr(key, 20) for key in list(value)[:5])
        return f"a dict (keys: {keys}{', ...' if len(value) > 5 else ''})"
    if isinstance(value, (list, tuple)):
        kind = type(value).__name__
        if not value:
            return f"an empty {kind}"
        return f"a {kind} of {len(value)} item{'s' if len(value) != 1 else ''}, the first {describe(value[0])}"
    if isinstance(value, LoadedMapper):
        kind = "global" if isinstance(value.module, GlobalMapper) else "local"
        return f"an ELITE {kind} mapper ({value.name!r})"
    if isinstance(value, ELITEConcept):
        return "an ELITE concept"
    if isinstance(value, CatVersionPrefix):
        return f"a CatVersion adapter ({value.name!r})"
    for cls, name in ((MODEL_PATCHER, "MODEL"), (CLIP_CLASS, "CLIP"), (VAE_CLASS, "VAE"),
                      (CLIP_VISION_CLASS, "CLIP_VISION")):
        if cls is not None and isinstance(value, cls):
            return f"a {name}"
    return _article(type(value).__name__)


def socket_type(item) -> str | None:
    """The socket type name of a V3 schema input (``get_io_type`` on 0.3.75 and 0.33.0, ``io_type`` as
    a fallback)."""
    if callable(getattr(item, "get_io_type", None)):
        found = item.get_io_type()
    else:
        found = getattr(item, "io_type", None)
    return str.__str__(found) if isinstance(found, str) else None


def input_problem(node_name: str, input_name: str, type_name: str, value) -> str | None:
    """The message for ``value`` in input ``input_name`` of socket type ``type_name``; None when it fits
    (or when the pack has no rule for that type)."""
    socket = SOCKETS.get(type_name)
    if socket is None:
        return None
    why = socket.problem(value)
    if why is None:
        return None
    received = describe(value) + (f": {why}" if why else "")
    return f"{node_name}: input '{input_name}' should be {socket.expected}, but it received {received}. {WIRING_HINT}"


def check_node_inputs(node, values: Mapping[str, object]) -> None:
    """Refuse the first input of ``node`` (a V3 node class) whose value in ``values`` (e.g. the
    ``locals()`` of its ``execute``) is not of its socket type. Optional inputs may be None."""
    schema = node.define_schema()
    node_name = getattr(schema, "display_name", None) or getattr(schema, "node_id", None) or node.__name__
    for item in getattr(schema, "inputs", None) or []:
        name = getattr(item, "id", None)
        if name not in values:
            continue
        value = values[name]
        if value is None and getattr(item, "optional", False):
            continue
        problem = input_problem(node_name, name, socket_type(item), value)
        if problem:
            raise InputError(problem)
