"""Files made to break readers: an image header that declares a decompression bomb; tensor files that
are empty, cut short, declare a huge header, or are a pickle (that would run code) under another name."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB pixels (no pixel
    data): PIL refuses to open it as a decompression bomb from the header alone when it is huge."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")


# --------------------------------------------------------------------------- tensor files

PICKLE_MARKER = "this pickle ran code"  # what the payload prints if a reader unpickles it


def safetensors_huge_header(declared: int = 2**40) -> bytes:
    """A file whose first 8 bytes (a safetensors header's length) declare ``declared`` bytes of header,
    followed by a few bytes: read naively, it asks for a terabyte."""
    return struct.pack("<Q", declared) + b'{"__metadata__":{}}'


def truncated(data: bytes, keep: float) -> bytes:
    """The first ``keep`` share of ``data``: a download or copy that stopped."""
    return data[: int(len(data) * keep)]


class _Payload:
    """Unpickling this calls print(PICKLE_MARKER): the harmless stand-in for code a pickle can run."""

    def __reduce__(self):
        return print, (PICKLE_MARKER,)


def pickle_with_payload(path: str, tensors: dict) -> None:
    """``tensors`` saved by torch.save (a zip of pickles), with an object whose unpickling runs code:
    what a renamed .pt or a malicious file looks like to a reader."""
    import pickle

    import torch

    torch.save({**tensors, "payload": _Payload()}, path, pickle_module=pickle)
