"""Tensor and image files, shared by every method: the checks that make a damaged or unsafe file a
clear message instead of a traceback, atomic writes, and the one EXIF-aware image/mask reader.

Each method raises its own subclass of :class:`TensorFileError` (``MapperFormatError`` for ELITE's
mappers, ``CatVersionFormatError`` for CatVersion's adapters) and passes the model folder its
messages point the user to.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import zipfile

import numpy as np
import torch
from PIL import Image, ImageOps

from .checks import InputError

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
# the photo files the pack's folders are read for (training data, CatVersion photos, benchmarks)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# what open() gives a new file here: safetensors writes its files owner-only (0600), which would hide a
# saved concept, mapper or adapter from the other users of a shared ComfyUI
FILE_MODE = _default_file_mode()


class TensorFileError(ValueError):
    """A model file that cannot be used (damaged, unsafe, or of another kind); the message says why."""


def fetch_again(folder: str) -> str:
    return f"The download or copy did not finish, or the file was damaged: fetch it again into {folder}."


# --------------------------------------------------------------------------- tensor files


# safetensors' own limit on a header (its reader refuses a larger one): the header is read before anything else
MAX_SAFETENSORS_HEADER = 100_000_000


def _pickle_in_disguise(head: bytes) -> bool:
    """Whether a file starts as torch.save writes it: a zip archive, or a bare pickle (protocol 2 to 5)."""
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def safetensors_metadata(path: str, folder: str, error: type[TensorFileError] = TensorFileError,
                         again: str | None = None) -> dict[str, str]:
    """Check that a safetensors file is complete and return its metadata (without loading tensors).
    ``folder`` is where the message tells the user to put a fresh copy, ``again`` (optional) what
    else to do to get a good file; ``error`` is raised."""
    again = again or fetch_again(folder)
    name, size = os.path.basename(path), os.path.getsize(path)
    if size == 0:
        raise error(f"'{name}' is empty (0 bytes). {again}")
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else None
        header_fits = header_len is not None and header_len <= min(size - 8, MAX_SAFETENSORS_HEADER)
        if not header_fits and _pickle_in_disguise(head):
            raise error(
                f"'{name}' is not a safetensors file: it is a pickle (a torch .pt / .ckpt file) renamed to "
                f"{os.path.splitext(name)[1] or 'no extension'}. It was not opened (loading a pickle can run "
                f"code). {again}"
            )
        if header_len is not None and header_len > MAX_SAFETENSORS_HEADER:
            raise error(
                f"'{name}' is not a safetensors file: its first bytes declare a {header_len:,}-byte header, and a "
                f"safetensors header is at most {MAX_SAFETENSORS_HEADER:,} bytes (the file has {size:,}). It is "
                f"damaged or another kind of file. {again}"
            )
        if not header_fits:
            raise error(
                f"'{name}' is truncated or not a safetensors file: it has {size:,} bytes, fewer than its "
                f"header needs. {again}"
            )
        try:
            header = json.loads(f.read(header_len))
            needed = 8 + header_len + max((int(entry["data_offsets"][1]) for key, entry in header.items()
                                           if key != "__metadata__"), default=0)
            metadata = dict(header.get("__metadata__") or {})
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise error(f"'{name}' is not a safetensors file: its header cannot be read ({exc}). {again}") from None
    if needed > size:
        raise error(f"'{name}' is truncated: it has {size:,} bytes of the {needed:,} its header declares. {again}")
    return metadata


# The Python object a weights-only load refused, in each wording torch has used: "Unsupported global:
# GLOBAL builtins.print was not an allowed global", "unsupported GLOBAL posix.system whose module posix
# is blocked", and for an object built from an allowed global, "... but got <class 'x.Y'>".
_REFUSED_OBJECT = (
    re.compile(r"GLOBAL ([\w.]+)", re.IGNORECASE),
    re.compile(r"but got <class '([\w.]+)'>"),
)
# torch's own advice (re-running with weights_only=False, allowlisting the global) would run the code a
# weights-only load refused: the pack never passes any of torch's text on for a refused file.
SAFE_ADVICE = ("Do not load it with weights_only=False or allowlist its objects: that runs whatever code the "
               "file holds. Get the .safetensors file, or the official file, from where you found it")


def refused_object(exc: Exception) -> str | None:
    """The Python object (module.name) a weights-only torch.load refused, or None."""
    text = str(exc)
    for pattern in _REFUSED_OBJECT:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def describe_pickle_error(path: str, exc: Exception, what: str, folder: str, convert: str = "") -> str:
    """What a failed weights-only torch.load of ``path`` means for the user (``what``: the kind of
    file, e.g. "ELITE mappers"; ``folder``: where a fresh copy goes; ``convert``: the pack's converter
    for a file the user trusts, when there is one). Quotes none of torch's message."""
    name = os.path.basename(path)
    advice = SAFE_ADVICE + (f"; convert only a file you trust, with {convert}." if convert else ".")
    refused = refused_object(exc)
    if refused:
        return (
            f"'{name}' was refused: it needs the Python object '{refused}', which a weights-only load does not "
            f"allow. {what} contain only tensors; a file that needs arbitrary Python objects is refused for "
            f"safety. {advice}"
        )
    with open(path, "rb") as f:
        head = f.read(64)
    text = str(exc)
    damaged_zip = head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path)
    if damaged_zip or isinstance(exc, EOFError) or "truncated" in text or "failed finding central directory" in text:
        return (
            f"'{name}' is truncated or damaged: it is not a complete torch checkpoint "
            f"({os.path.getsize(path):,} bytes). {fetch_again(folder)}"
        )
    if head.startswith(b"version https://git-lfs"):
        return (f"'{name}' is a Git LFS pointer (a small text file), not the weights: fetch the file itself "
                f"(git lfs pull, or the download link) into {folder}.")
    return (
        f"Could not read '{name}' as a weights-only torch checkpoint ({exc.__class__.__name__}). {what} are "
        f"torch.save'd dicts of tensors or .safetensors files; this file is damaged or of another kind. {advice}"
    )


def owned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies, in storage of their own, of the tensors a file reader handed back. safetensors returns
    tensors at the file's byte offsets (unaligned), and the CPU matmul rounds differently on unaligned
    operands: without the copy the same weights give other bits from a .safetensors file than from a
    .pt (and are a slower operand). One copy at load; torch's allocator aligns to 64 bytes."""
    return {key: tensor.clone(memory_format=torch.contiguous_format) for key, tensor in tensors.items()}


PARTIAL_SUFFIX = ".partial"  # how write_atomically's temporary files end (their names are short: .<32 chars>.<random>)
DEFAULT_NAME_MAX = 255  # bytes in one file name: ext4, XFS, APFS, NTFS (in UTF-16 units), ...


def write_atomically(path: str, write, overwrite: bool = True) -> None:
    """``write(temporary_path)``, then rename the result to ``path``: a reader never sees a
    half-written file, and a failed write leaves nothing behind. The temporary file is a new, unique
    name beside ``path`` (``.<name>.<random>.partial``), so two processes saving at once never write
    into the same file. With ``overwrite=False`` an existing ``path`` is never replaced: the finished
    file is linked into place and :class:`FileExistsError` says another writer took the name first.
    The file gets the permissions of any new file here (:data:`FILE_MODE`), whatever the writer used."""
    folder, name = os.path.split(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{name[:32]}.", suffix=PARTIAL_SUFFIX)
    os.close(handle)
    try:
        write(partial)
        os.chmod(partial, FILE_MODE)
        if overwrite:
            os.replace(partial, path)
        else:
            _claim(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _claim(partial: str, path: str) -> None:
    """Give the finished ``partial`` the name ``path`` unless that name exists (FileExistsError)."""
    try:
        os.link(partial, path)  # atomic, and fails if the name is taken
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name, then move the file over it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
        os.replace(partial, path)


def name_max(folder: str) -> int:
    """The longest file name, in bytes, that the file system holding ``folder`` takes (its nearest
    existing parent where it does not exist yet); :data:`DEFAULT_NAME_MAX` where the system cannot say."""
    probe = os.path.abspath(folder)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        limit = os.pathconf(probe, "PC_NAME_MAX")
    except (AttributeError, ValueError, OSError):  # no pathconf (Windows), or the system has no such limit
        return DEFAULT_NAME_MAX
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_NAME_MAX


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_name_length(folder: str, name: str, longest_file: str, what: str) -> None:
    """Refuse ``name`` when ``longest_file``, the longest file name a save makes of it in ``folder``
    (counter and suffix included; :func:`write_atomically`'s temporary names are short), has more bytes in UTF-8
    than the folder's file system takes: the save would fail with "File name too long"."""
    size, limit = _utf8_size(longest_file), name_max(folder)
    if size <= limit:
        return
    name_bytes = _utf8_size(name)
    shown = name if len(name) <= 40 else name[:40] + "..."
    raise InputError(
        f"The {what} {shown!r} is too long for a file name: it is {len(name)} characters, {name_bytes} bytes in UTF-8, "
        f"and the file saved from it ('{longest_file[len(name):]}' added) would have a {size}-byte name; the file "
        f"system of {folder} takes at most {limit} bytes per name. Use a name "
        f"of at most {name_bytes - (size - limit)} bytes (letters outside A-Z take 2-4 bytes each).")


def disk_full(exc: BaseException, where: str) -> str | None:
    """The message for a write that failed because the disk (or the user's quota) is full, else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"The disk holding {where} is full ({os.strerror(exc.errno)}): nothing half-written was kept. "
                "Free some space (or choose a folder on another disk) and run the command again.")
    return None


# --------------------------------------------------------------------------- image files


class ImageTooLargeError(OSError):
    """An image file that declares more pixels than PIL opens safely (a decompression bomb, or a
    damaged header). An ``OSError``, so every reader that skips unreadable images skips it too."""


@contextlib.contextmanager
def open_image(path_or_file):
    """``PIL.Image.open`` that refuses a decompression bomb with :class:`ImageTooLargeError` (it
    names the file and the declared size) instead of PIL's own exception."""
    try:
        img = Image.open(path_or_file)
    except Image.DecompressionBombError as exc:
        where = path_or_file if isinstance(path_or_file, (str, os.PathLike)) else "an image"
        raise ImageTooLargeError(f"{where} declares more pixels than is safe to open ({exc}); it is a decompression "
                                 "bomb or a damaged file. Use a photo of at most a few thousand pixels a side.") from None
    with img:
        yield img


def open_oriented(path: str) -> Image.Image:
    """An image file as PIL, turned upright by its EXIF orientation (as ComfyUI's Load Image does):
    a phone photo is seen the same way by the nodes, the trainers and the evaluation."""
    with open_image(path) as img:
        return ImageOps.exif_transpose(img)


def read_image(path: str) -> torch.Tensor:
    """An image file as IMAGE (1, H, W, 3) in [0, 1], upright by its EXIF orientation."""
    return torch.from_numpy(np.asarray(open_oriented(path).convert("RGB"), dtype=np.float32) / 255.0)[None]


def read_mask(path: str) -> torch.Tensor:
    """A mask file (white on the object, as ELITE's ``_bg.png`` files) as MASK (1, H, W), 1 on the
    object, upright by its EXIF orientation."""
    red = np.asarray(open_oriented(path).convert("RGB"))[..., 0]
    return torch.from_numpy((red > 127).astype(np.float32))[None]
