"""Flushing a large output to disk while it is written: the data is intact and a flush error is not lost."""

from __future__ import annotations

import errno
import os
import time

import pytest

from securetrain.core.fsutil import atomic_output, flushed_while_written


def test_the_output_is_whole_when_flushed_while_written(tmp_path):
    target = tmp_path / "out.bin"
    blocks = [bytes([i]) * 65536 for i in range(32)]
    with atomic_output(target) as out, flushed_while_written(out, interval_s=0.001):
        for block in blocks:
            out.write(block)
            time.sleep(0.002)  # let the flusher run between writes
    assert target.read_bytes() == b"".join(blocks)


def test_an_error_the_flusher_meets_is_raised_when_the_block_ends():
    read_end, write_end = os.pipe()  # fdatasync refuses a pipe: a stand-in for a disk that fails

    class PipeOutput:
        def fileno(self) -> int:
            return write_end

    try:
        with pytest.raises(OSError) as raised:
            with flushed_while_written(PipeOutput(), interval_s=0.001):  # type: ignore[arg-type]
                time.sleep(0.05)
        assert raised.value.errno == errno.EINVAL
    finally:
        os.close(read_end)
        os.close(write_end)
