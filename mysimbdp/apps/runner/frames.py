"""The wire between the daemon and an app worker: length-prefixed BSON documents over pipes.

Each frame is a 4-byte big-endian length and one BSON document. BSON carries everything the
two sides exchange (records, documents with dates and binary values, Arrow IPC buffers as
binary) and decoding it runs no code, so a frame from a hostile worker is only data. The
reader refuses a frame longer than its bound before reading it.
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import bson
from bson.codec_options import CodecOptions, UuidRepresentation

__all__ = ["CODEC", "FrameError", "WorkerGone", "write_frame", "read_frame", "read_frame_buffered", "encode", "decode"]

CODEC: CodecOptions[dict[str, Any]] = CodecOptions(uuid_representation=UuidRepresentation.STANDARD)
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """The other side sent something that is not a frame of the protocol (or too large)."""


class WorkerGone(Exception):
    """The pipe closed: the other side exited (or was killed)."""


def encode(doc: dict[str, Any]) -> bytes:
    """One document as BSON (raises ``bson.errors.InvalidDocument`` for what BSON cannot hold)."""
    return bson.encode(doc, codec_options=CODEC)


def decode(data: bytes) -> dict[str, Any]:
    """One BSON document; a malformed one is a :class:`FrameError`."""
    try:
        return bson.decode(data, codec_options=CODEC)
    except Exception as exc:  # bson.errors.InvalidBSON and friends: the peer broke the protocol
        raise FrameError(f"not a valid BSON document: {exc}"[:300]) from None


def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame (``payload`` is an encoded document); :class:`WorkerGone` if the pipe closed."""
    data = memoryview(_LEN.pack(len(payload)) + payload)
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except (BrokenPipeError, OSError) as exc:
        raise WorkerGone(f"the pipe closed while writing: {exc}") from None


def read_frame(fd: int, max_bytes: int, deadline: float | None = None) -> dict[str, Any]:
    """Read and decode one frame; :class:`WorkerGone` at end of file, :class:`FrameError` if it is
    longer than ``max_bytes`` or malformed, ``TimeoutError`` past ``deadline`` (monotonic)."""
    (length,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if length > max_bytes:
        raise FrameError(f"a message of {length} bytes is over the limit of {max_bytes} bytes")
    return decode(_read_exact(fd, length, deadline))


def read_frame_buffered(reader: Any, max_bytes: int) -> dict[str, Any]:
    """:func:`read_frame` through a buffered reader of the pipe (one read may bring many frames).

    The reader must be the session's own: bytes it has buffered belong to that pipe only.
    """
    head = reader.read(_LEN.size)
    if len(head) < _LEN.size:
        raise WorkerGone("the pipe closed")
    (length,) = _LEN.unpack(head)
    if length > max_bytes:
        raise FrameError(f"a message of {length} bytes is over the limit of {max_bytes} bytes")
    body = reader.read(length)
    if len(body) < length:
        raise WorkerGone("the pipe closed")
    return decode(body)


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    parts: list[bytes] = []
    left = n
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise WorkerGone("the pipe closed")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
