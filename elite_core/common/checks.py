"""Checks of node inputs that torch would otherwise take silently (NaN, a 1-pixel image) or fail on
deep inside. Each raises :class:`InputError` with a message that names the culprit and says what was
expected. Shared by every method's nodes and command lines; pure Python and torch.
"""

from __future__ import annotations

import argparse
import math
import unicodedata

import torch

MIN_IMAGE_SIDE = 2  # pixels; a 0- or 1-pixel image carries no picture of the object


class InputError(ValueError):
    """An input (a node's, or a command line's) that cannot be used; the message says what was expected."""


ELITEInputError = InputError  # the name the pack's nodes and tests have always caught


def check_number(label: str, value, low: float, high: float) -> float:
    """``value`` as a float when it is a finite number in [low, high]; otherwise refuse it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{label} must be a number from {low} to {high}, got {value!r}.")
    if math.isnan(value):
        raise InputError(f"{label} is NaN (not a number); it must be a number from {low} to {high}.")
    if math.isinf(value):
        raise InputError(f"{label} is infinite; it must be a number from {low} to {high}.")
    if not low <= value <= high:
        raise InputError(f"{label} is {value}; it must be from {low} to {high}.")
    return float(value)


def _count_non_finite(tensor: torch.Tensor) -> int:
    return int((~torch.isfinite(tensor)).sum().item()) if tensor.is_floating_point() else 0


def image_layout_problem(image: torch.Tensor) -> str | None:
    """Why a tensor is not a ComfyUI IMAGE (floats, (batch, height, width, 3 or 4)), or None. The one
    statement of the layout: the socket check at a node's entry and :func:`check_image` both use it."""
    if not image.is_floating_point():
        return "IMAGE values must be floats in 0..1"
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        return "an IMAGE is a batch (batch, height, width, channels) with 3 or 4 channels"
    return None


def mask_layout_problem(mask: torch.Tensor) -> str | None:
    """Why a tensor is not a ComfyUI MASK (floats, (height, width) or (batch, height, width)), or None."""
    if not mask.is_floating_point():
        return "MASK values must be floats in 0..1"
    if mask.dim() not in (2, 3):
        return "a MASK is (height, width) or (batch, height, width)"
    return None


def check_image(image, what: str = "concept IMAGE") -> None:
    """A ComfyUI IMAGE (batch, height, width, 3 or 4) with at least 2x2 pixels, all finite."""
    problem = image_layout_problem(image) if isinstance(image, torch.Tensor) else None
    if problem or not isinstance(image, torch.Tensor):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        why = f" ({problem})" if problem else ""
        raise InputError(f"The {what} must be an IMAGE batch (batch, height, width, 3), got {shape}{why}.")
    batch, height, width = image.shape[:3]
    if batch == 0:
        raise InputError(f"The {what} batch is empty (0 images).")
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise InputError(
            f"The {what} is {width}x{height} pixels: there is no picture of the object in it. ELITE needs "
            f"an image at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (it is resized to 224x224; 224x224 or "
            "larger works best). Check the node that made or cropped it."
        )
    bad = _count_non_finite(image)
    if bad:
        raise InputError(
            f"The {what} contains {bad} non-finite values (NaN or inf): the node that made it produced "
            "broken pixels. Pixels must be numbers from 0 to 1; check the nodes before ELITE Encoder."
        )


def check_mask(mask, what: str = "object MASK") -> None:
    """A ComfyUI MASK (batch, height, width) or (height, width) with pixels, all finite."""
    problem = mask_layout_problem(mask) if isinstance(mask, torch.Tensor) else None
    if problem or not isinstance(mask, torch.Tensor):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        why = f" ({problem})" if problem else ""
        raise InputError(f"The {what} must be a MASK (batch, height, width), got {shape}{why}.")
    if mask.numel() == 0:
        raise InputError(f"The {what} is empty (shape {tuple(mask.shape)}): it has no pixels.")
    bad = _count_non_finite(mask)
    if bad:
        raise InputError(
            f"The {what} contains {bad} non-finite values (NaN or inf); mask values must be from 0 to 1. "
            "Check the node that made it."
        )


# --------------------------------------------------------------------------- file names

# what Windows refuses in a file name; Linux and macOS refuse only '/' (and NUL, a control character)
WINDOWS_FORBIDDEN = '<>:"|?*'
FILE_NAME_RULE = ("any letters (of any script), digits, spaces and punctuation, except / \\ < > : \" | ? * and "
                  "control characters")


def file_name_character_problem(char: str) -> str | None:
    """Why one character cannot be in a file name on Linux, macOS and Windows alike, or None."""
    if char in "/\\":
        return "it contains a folder separator ('/' or '\\'): give a name, not a path"
    if char in WINDOWS_FORBIDDEN:
        return f"it contains {char!r}, which Windows does not allow in file names"
    if unicodedata.category(char) in ("Cc", "Cs"):
        return f"it contains the control character U+{ord(char):04X}"
    return None


def safe_file_stem(value, what: str, example: str, rule: str = FILE_NAME_RULE) -> str:
    """``value`` as the start of a file name that every file system here takes: stripped, in Unicode's
    composed form (NFC, so that macOS lists the name that was saved). Letters and digits of any script,
    spaces and punctuation are fine (also '..' inside a name: 'my..concept'); refused are a path
    ('/' or '\\'), '.' or '..' alone, a leading '.' (a hidden file), what Windows forbids (<>:"|?*, a
    trailing dot) and control characters. ``what`` names the input in the message ("The concept
    name"); ``example`` is a name that works; ``rule`` says what to use, for a caller with more rules."""
    name = unicodedata.normalize("NFC", value.strip()) if isinstance(value, str) else ""
    problem = None
    if not isinstance(value, str):
        problem = f"it is {type(value).__name__}, not text"
    elif not name:
        problem = "it is empty"
    elif name in (".", ".."):
        problem = "'.' and '..' name folders, not files"
    else:
        problem = next(filter(None, map(file_name_character_problem, name)), None)
        if problem is None and name.startswith("."):
            problem = "it starts with '.', which hides the file"
        elif problem is None and name.endswith("."):
            problem = "it ends with '.', which Windows drops from file names"
    if problem:
        raise InputError(f"{what} {value!r} cannot be a file name: {problem}. Use {rule}, e.g. {example!r}.")
    return name


# --------------------------------------------------------------------------- command-line options

MAX_SEED = 2**63 - 1  # what the nodes' seed widgets accept


def whole_number(low: int, high: int | None = None, multiple_of: int = 1):
    """An ``argparse`` type: a whole number from ``low`` (to ``high``), a multiple of ``multiple_of``.
    A bad value ends the command with ``argument --x: <why>`` before anything loads."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high) or value % multiple_of:
            wanted = f"a whole number of at least {low}" if high is None else f"a whole number from {low} to {high}"
            if multiple_of > 1:
                wanted += f", a multiple of {multiple_of}"
            raise argparse.ArgumentTypeError(f"{value} is not usable: give {wanted}")
        return value

    parse.__name__ = "whole number"
    return parse


def real_number(low: float, high: float | None = None, above_low: bool = False):
    """An ``argparse`` type: a finite number from ``low`` (or above it, with ``above_low``) to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value <= low if above_low else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            wanted = f"above {low}" if above_low else f"at least {low}"
            if high is not None:
                wanted += f" and at most {high}"
            raise argparse.ArgumentTypeError(f"{text} is not usable: give a finite number {wanted}")
        return value

    parse.__name__ = "number"
    return parse


seed_number = whole_number(0, MAX_SEED)
