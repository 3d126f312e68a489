"""Writing files so that a failure leaves nothing half-written behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
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


@contextlib.contextmanager
def flushed_while_written(out: BinaryIO, *, interval_s: float = 0.05) -> Iterator[BinaryIO]:
    """Have the disk write ``out``'s data while the block is still producing it.

    For large outputs made durable at the end (:func:`atomic_output`'s fsync): a second thread calls
    ``fdatasync`` every ``interval_s``, so the disk works while the CPU seals or decrypts, and the final
    fsync waits only for the last interval's data instead of the whole file. The thread touches only the
    file descriptor, never ``out``'s buffer. An error it meets is raised here when the block ends: on Linux a
    write error is reported to one ``fsync`` only, so it must not be lost in the background.
    """
    fd = out.fileno()
    stop = threading.Event()
    errors: list[OSError] = []

    def flush() -> None:
        while not stop.wait(interval_s):
            try:
                os.fdatasync(fd)
            except OSError as exc:
                errors.append(exc)
                return

    flusher = threading.Thread(target=flush, name="fdatasync", daemon=True)
    flusher.start()
    try:
        yield out
    finally:
        stop.set()
        flusher.join()
    if errors:
        raise errors[0]
