"""Starting and stopping exactly the processes the stack started.

A PID file names a process by its PID, its start time and the boot id, and stopping signals the process's
own group: docs/local-stack.md ("Health, status and stopping") says why each is needed. Linux only: it
reads ``/proc``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from securetrain.localstack.errors import CorruptPidFile, StackError
from securetrain.localstack.layout import write_file

logger = logging.getLogger(__name__)

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"
_POLL_INTERVAL_S = 0.05

# Children this Python process started, kept so that they are reaped (no zombies linger while a test
# session or a long `up` runs) and so that Popen does not warn about a child it believes abandoned.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class _ProcStat:
    state: str
    process_group: int
    start_ticks: int


def _read_stat(pid: int) -> _ProcStat | None:
    """The fields of ``/proc/<pid>/stat`` the stack needs, or None when there is no such process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and ')': split after the
    # last ')'. What follows starts at field 3 (state).
    fields = text[text.rindex(")") + 2 :].split()
    return _ProcStat(state=fields[0], process_group=int(fields[2]), start_ticks=int(fields[19]))


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError as exc:
        raise StackError(f"cannot read {_BOOT_ID} ({exc}): the local stack needs Linux /proc") from exc


def _reap_if_child(pid: int) -> bool:
    """Collect ``pid``'s exit status if this process started it; False while it cannot be collected yet. /proc
    shows a multithreaded process's leader as a zombie once its own thread has exited, before the kernel has
    torn down its other threads and let its parent collect it."""
    child = _children.get(pid)
    if child is None:
        return True
    if child.poll() is None:
        return False
    del _children[pid]
    return True


@dataclass(frozen=True)
class ProcessIdentity:
    """A process named so that a recycled PID cannot be mistaken for it."""

    pid: int
    start_ticks: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the running process ``pid``, or None if there is none (or only a zombie)."""
        current = _read_stat(pid)
        if current is None or current.state in ("Z", "X"):
            # Reaped after the zombie was seen, not before the look: a child that exits between the two would
            # otherwise stay a zombie.
            _reap_if_child(pid)
            return None
        return cls(pid, current.start_ticks, _boot_id())

    def is_running(self) -> bool:
        """Whether this very process (same PID, start time and boot) is still running."""
        return ProcessIdentity.of(self.pid) == self


@dataclass(frozen=True)
class PidRecord:
    """What a PID file says about a service the stack started."""

    process: ProcessIdentity
    host: str
    port: int
    # A digest of everything the process was started with (arguments, environment, certificate): when
    # `up` would start it differently now, it restarts it instead of keeping a stale one.
    fingerprint: str
    started_at: str

    def write(self, path: Path) -> None:
        """Write the record to ``path`` atomically."""
        write_file(path, json.dumps(asdict(self), indent=2).encode(), mode=0o600)

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        """The record in ``path``, or None when there is no PID file.

        Raises:
            CorruptPidFile: the file exists but does not hold a record.
        """
        try:
            raw = json.loads(path.read_text())
            return cls(**{**raw, "process": ProcessIdentity(**raw["process"])})
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptPidFile(
                f"PID file {path} is unreadable ({exc}); the stack will not guess which process it names. "
                "Stop that service's process yourself if it runs, then delete the file."
            ) from exc


def start_process(argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> ProcessIdentity:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``.

    Raises:
        StackError: the program could not be started, or exited before it could be identified.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log:
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        log.write(f"\n=== {started} securetrain stack starts: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"cannot start {argv[0]}: {exc}") from exc
    _children[child.pid] = child
    identity = ProcessIdentity.of(child.pid)
    if identity is None:
        raise StackError(f"{argv[0]} exited at once (exit status {child.poll()}); see {log_path}")
    return identity


def _group_members(group: int) -> list[int]:
    """The live (non-zombie) processes in process group ``group``."""
    members = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None and stat.process_group == group and stat.state not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _wait_group_gone(group: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        # Gone once no member is left and, if this process started the leader, its status is collected: reaping
        # before the scan of /proc left it a zombie whenever it died during the scan (a third of the stops of a
        # process that exits at once on SIGTERM), and reaping once, right after, whenever its other threads were
        # still exiting (a service's leader, multithreaded, shows as a zombie before it can be collected).
        if not _group_members(group) and _reap_if_child(group):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL_S)


def stop_process(identity: ProcessIdentity, *, grace_s: float = 10.0) -> bool:
    """Stop the process ``identity`` and its process group; True if it was running.

    SIGTERM to the group, up to ``grace_s`` for it to exit, then SIGKILL to what is left. Nothing is
    signalled unless ``identity`` is still the very process that was started.

    Raises:
        StackError: the process is no longer a process-group leader (it was not started by the stack the
            way the stack starts services), or it survived SIGKILL.
    """
    if not identity.is_running():
        return False
    group = identity.pid
    try:
        leader_of = os.getpgid(identity.pid)
    except ProcessLookupError:
        return False
    if leader_of != group:
        raise StackError(
            f"process {identity.pid} is not the leader of its own process group, so it was not started "
            "by the stack; it is left alone"
        )
    logger.debug("SIGTERM to process group %d", group)
    os.killpg(group, signal.SIGTERM)
    if _wait_group_gone(group, grace_s):
        return True
    logger.warning("process group %d still running %.0f s after SIGTERM: sending SIGKILL", group, grace_s)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return True
    if not _wait_group_gone(group, 5.0):
        raise StackError(f"process group {group} survived SIGKILL: {_group_members(group)}")
    return True
