"""The local stack's processes are reaped when they stop: none is left a zombie for the rest of the session (each
one would also make Popen warn at exit that it "is still running")."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from securetrain.localstack.process import start_process, stop_process


def _state(pid: int) -> str | None:
    """The process's state letter from /proc, or None when there is no such process (it was reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text[text.rindex(")") + 2]


def test_a_stopped_process_is_reaped_even_when_it_dies_at_once(tmp_path: Path) -> None:
    # `sleep` exits the moment SIGTERM arrives, often while the stop scans /proc for its process group: the
    # window in which a process used to be left a zombie (11 of 30 stops here before the fix).
    for _ in range(20):
        process = start_process(["sleep", "60"], os.environ, tmp_path / "sleep.log", tmp_path)
        assert stop_process(process, grace_s=5.0)
        assert _state(process.pid) is None


def test_a_stopped_multithreaded_process_is_reaped_once_its_threads_have_exited(tmp_path: Path) -> None:
    # The stack's services run threads: /proc shows such a leader as a zombie while the kernel still tears down its
    # other threads, before its parent can collect it (2 of 30 stops left one before the fix, services' teardowns
    # in the full suite 11).
    threads = ("import threading, time\n"
               "for _ in range(8): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
               "print('up', flush=True)\n"
               "time.sleep(60)\n")  # fmt: skip
    log = tmp_path / "threads.log"
    for started in range(1, 31):
        process = start_process([sys.executable, "-c", threads], os.environ, log, tmp_path)
        deadline = time.monotonic() + 10
        while log.read_text().count("up\n") < started:
            assert time.monotonic() < deadline, "the child did not start its threads"
            time.sleep(0.01)
        assert stop_process(process, grace_s=5.0)
        assert _state(process.pid) is None


def test_a_process_that_exited_by_itself_is_reaped_when_it_is_looked_at(tmp_path: Path) -> None:
    process = start_process(["sleep", "0.2"], os.environ, tmp_path / "sleep.log", tmp_path)
    deadline = time.monotonic() + 10
    while _state(process.pid) != "Z":
        assert time.monotonic() < deadline, "sleep 0.2 did not exit"
        time.sleep(0.02)
    assert not process.is_running()
    assert _state(process.pid) is None
    assert not stop_process(process)
