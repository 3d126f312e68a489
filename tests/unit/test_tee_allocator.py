"""The allocator setting of the TEE's processes: what it does to a process started with it, that the image sets it,
and the agent's warning when it is missing."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from securetrain.tee.allocator import TEE_ALLOCATOR_ENVIRONMENT, warn_if_allocator_untuned

REPO = Path(__file__).resolve().parents[2]

# Started as a training worker is: a new interpreter that imports torch (whose libraries start threads); then four
# threads hold 1 MiB buffers at once, and it prints how many arenas glibc's malloc_info lists.
_ARENAS = """
import ctypes, tempfile, threading, torch
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
start = threading.Barrier(4)
def allocate():
    start.wait()
    kept = [bytearray(1 << 20) for _ in range(8)]
    start.wait()
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
with tempfile.NamedTemporaryFile() as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(report.read().decode().count('<heap nr="'))
"""


def _arenas(environment: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", _ARENAS], env=environment, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc's allocator")
def test_a_process_started_with_the_setting_allocates_from_one_arena() -> None:
    defaults = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    # The test's own evidence that it measures something: glibc's defaults give the threads arenas of their own.
    assert _arenas(defaults) > 1
    assert _arenas({**defaults, **TEE_ALLOCATOR_ENVIRONMENT}) == 1


def test_the_image_sets_it_for_every_process_it_starts() -> None:
    dockerfile = (REPO / "docker/securetrain.Dockerfile").read_text()
    for name, value in TEE_ALLOCATOR_ENVIRONMENT.items():
        assert re.search(rf"^ENV {name}={value}$", dockerfile, re.MULTILINE), name


def test_the_agent_warns_when_started_without_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="securetrain.tee.allocator"):
        warn_if_allocator_untuned({})
        warn_if_allocator_untuned({"MALLOC_ARENA_MAX": "8"})
        warn_if_allocator_untuned(dict(TEE_ALLOCATOR_ENVIRONMENT))
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "MALLOC_ARENA_MAX is unset, not 1", "MALLOC_ARENA_MAX is '8', not 1",
    ]  # fmt: skip
    assert "start the agent with MALLOC_ARENA_MAX=1" in caplog.records[0].getMessage()
