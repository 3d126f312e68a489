"""Messages between the training launcher and its worker processes: length-prefixed frames over a pipe.

A frame is an 8-byte big-endian length, that many bytes of a JSON object, and, when the object names a
``"size"``, that many raw bytes after it (key material, a sealed checkpoint). JSON and raw bytes only: nothing
that a reader would execute to decode (no pickle).
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

from securetrain.core.errors import SecuretrainError

_LENGTH = struct.Struct(">Q")
# A frame's JSON is a spec, progress or an error: far below this; a larger length is a broken stream.
_MAX_JSON = 64 << 20


class BrokenFrame(SecuretrainError):
    """A pipe ended inside a frame, or carried something that is not a frame."""


def write_frame(out: BinaryIO, message: dict[str, Any], data: bytes = b"") -> None:
    """Write ``message`` (and ``data``, announced by its ``size``) as one frame and flush it."""
    body = json.dumps({**message, "size": len(data)} if data else message, separators=(",", ":")).encode()
    out.write(_LENGTH.pack(len(body)) + body + data)
    out.flush()


def _exactly(src: BinaryIO, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = src.read(left)
        if not chunk:
            raise BrokenFrame(f"the pipe ended {left} bytes before the end of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(src: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next frame's (message, data); None at the end of the stream between frames."""
    head = src.read(_LENGTH.size)
    if not head:
        return None
    if len(head) < _LENGTH.size:
        head += _exactly(src, _LENGTH.size - len(head))
    (length,) = _LENGTH.unpack(head)
    if length > _MAX_JSON:
        raise BrokenFrame(f"a frame announces {length} bytes of JSON, more than the {_MAX_JSON} allowed")
    try:
        message = json.loads(_exactly(src, length))
    except ValueError as exc:
        raise BrokenFrame(f"a frame's JSON does not parse: {exc}") from None
    if not isinstance(message, dict):
        raise BrokenFrame("a frame's JSON is not an object")
    size = message.get("size", 0)
    if not isinstance(size, int) or size < 0:
        raise BrokenFrame(f"a frame announces {size!r} bytes of data")
    return message, _exactly(src, size) if size else b""
