"""Writing files so that a failure leaves nothing half-written behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a temporary file beside ``path`` that replaces ``path`` only if the block succeeds.

    The temporary file is created with ``mode`` (owner-only by default: what is written may be
    plaintext), flushed and fsynced before the rename, and removed if anything fails, so a reader of
    ``path`` sees either the old file or the complete new one, never a partial one.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent or ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
