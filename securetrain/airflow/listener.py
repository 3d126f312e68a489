"""An Airflow listener that writes the task and DAG-run state changes of securetrain's DAGs into the run's audit log.

Registered through the plugin's ``listeners``. A hook only builds its event and queues it: one daemon thread per
process (:class:`AuditEventRecorder`) records the events in order, so neither the scheduler nor a task waits for
storage; the queue is bounded, drained before a process ends, and :func:`flush` lets the ``audit`` task wait for
it. A listener never fails a task or the scheduler: every error is logged, naming the event not recorded.
Where each hook runs and why: docs/monitoring.md ("The audit-trail listener").
"""

from __future__ import annotations

import atexit
import collections
import datetime
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl
from securetrain.airflow.dag_tags import SECURETRAIN_TAG

if TYPE_CHECKING:
    from securetrain.core.audit.events import AuditEvent

logger = logging.getLogger(__name__)

#: An error message is cut to this many characters in the event (details stay small).
MAX_ERROR_CHARS = 2000
#: Events waiting to be recorded, per process, at most; one more is dropped (and logged), never waited for.
QUEUE_CAPACITY = 1000
#: How long a process that ends waits for its queued events to be recorded.
EXIT_FLUSH_TIMEOUT_S = 30.0


def _tags(dag: Any) -> set[str]:
    tags = getattr(dag, "tags", None) or ()
    return {tag if isinstance(tag, str) else getattr(tag, "name", "") for tag in tags}


def _is_securetrain_task(task_instance: Any) -> bool:
    task = getattr(task_instance, "task", None)
    dag = getattr(task, "dag", None) if task is not None else None
    if dag is None:
        dag = getattr(task_instance, "dag_model", None)
    return SECURETRAIN_TAG in _tags(dag)


def _is_securetrain_run(dag_run: Any) -> bool:
    dag = getattr(dag_run, "dag", None) or getattr(dag_run, "dag_model", None)
    return SECURETRAIN_TAG in _tags(dag)


def _time(moment: datetime.datetime | None) -> str:
    from securetrain.core.audit.events import rfc3339_utc  # noqa: PLC0415 - plugin import stays light

    moment = moment if moment is not None and moment.tzinfo is not None else datetime.datetime.now(datetime.UTC)
    return rfc3339_utc(moment)


def task_state_event(
    task_instance: Any, state: str, previous_state: Any, error: BaseException | str | None = None
) -> AuditEvent:
    """The ``task_state`` audit event for ``task_instance`` entering ``state``."""
    from securetrain.airflow.locations import job_run_id  # noqa: PLC0415
    from securetrain.core.audit.events import AuditEvent, EventKind, EventSource  # noqa: PLC0415

    details: dict[str, Any] = {
        "dag_id": task_instance.dag_id,
        "dag_run_id": task_instance.run_id,
        "task_id": task_instance.task_id,
        "map_index": task_instance.map_index,
        "try_number": task_instance.try_number,
        "state": state,
        "previous_state": str(previous_state) if previous_state is not None else None,
    }
    if error is not None:
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        details["error"] = text[:MAX_ERROR_CHARS]
    moment = getattr(task_instance, "end_date", None) if state != "running" else None
    return AuditEvent(EventKind.TASK_STATE, job_run_id(task_instance.dag_id, task_instance.run_id),
                      EventSource.AIRFLOW, _time(moment), details)  # fmt: skip


def dag_run_state_event(dag_run: Any, state: str, msg: str) -> AuditEvent:
    """The ``dag_run_state`` audit event for ``dag_run`` entering ``state``."""
    from securetrain.airflow.locations import job_run_id  # noqa: PLC0415
    from securetrain.core.audit.events import AuditEvent, EventKind, EventSource  # noqa: PLC0415

    details = {"dag_id": dag_run.dag_id, "dag_run_id": dag_run.run_id, "state": state, "message": msg}
    moment = getattr(dag_run, "end_date", None) if state != "running" else None
    return AuditEvent(EventKind.DAG_RUN_STATE, job_run_id(dag_run.dag_id, dag_run.run_id), EventSource.AIRFLOW,
                      _time(moment), details)  # fmt: skip


def record_in_run_log(event: AuditEvent) -> None:
    """Append ``event`` to its run's audit log in blob storage and sign a checkpoint after it."""
    from securetrain.airflow.audit import record_events  # noqa: PLC0415 - plugin import stays light
    from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415

    with SecureStorageHook().blob_store() as store:
        record_events(store, event.run_id, [event])


@dataclass(frozen=True)
class PendingEvent:
    """An event waiting to be recorded, and how the log names it if it cannot be."""

    describe: str
    event: AuditEvent


class AuditEventRecorder:
    """Records audit events on one daemon thread of this process, in the order they were submitted.

    :meth:`submit` never blocks and never raises; :meth:`flush` waits, bounded, until every submitted event
    has been handled. A forked child starts with an empty queue and no worker (it starts its own on its first
    event): the parent's worker records what the parent queued, exactly once.
    """

    def __init__(
        self, record: Callable[[AuditEvent], None] = record_in_run_log, *, capacity: int = QUEUE_CAPACITY,
        exit_timeout_s: float = EXIT_FLUSH_TIMEOUT_S,
    ) -> None:  # fmt: skip
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._record = record
        self._capacity = capacity
        self._exit_timeout_s = exit_timeout_s
        self._start_empty()
        os.register_at_fork(after_in_child=self._start_empty)

    def _start_empty(self) -> None:
        # One condition guards the queue, the busy flag and the dropped count: hooks, the worker and flush()
        # run on different threads.
        self._changed = threading.Condition()
        self._queue: collections.deque[PendingEvent] = collections.deque()
        self._busy = False
        self._dropped = 0
        self._worker: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Events this process dropped because the queue was full."""
        with self._changed:
            return self._dropped

    def submit(self, describe: str, event: AuditEvent) -> bool:
        """Queue ``event`` for recording; False (logged as an error) when the queue is full or no worker can start."""
        try:
            with self._changed:
                if len(self._queue) >= self._capacity:
                    self._dropped += 1
                    dropped = self._dropped
                else:
                    self._ensure_worker()
                    self._queue.append(PendingEvent(describe, event))
                    self._changed.notify_all()
                    return True
        except Exception:  # noqa: BLE001 - e.g. no thread can be started while the interpreter shuts down
            logger.exception("audit: could not queue %s for the run's audit log", describe)
            return False
        logger.error("audit: dropped %s: %d events are already waiting to be recorded (%d dropped in this process)",
                     describe, self._capacity, dropped)  # fmt: skip
        return False

    def _ensure_worker(self) -> None:
        """Start this process's worker (the caller holds the condition)."""
        if self._worker is not None:
            return
        worker = threading.Thread(target=self._work, name="securetrain-audit-recorder", daemon=True)
        worker.start()
        self._worker = worker
        # Registered from the process that runs the worker: Airflow's task processes are forked, and clear the
        # exit handlers they inherit. unregister first: exactly one registration per process.
        atexit.unregister(self.flush_before_exit)
        atexit.register(self.flush_before_exit)

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue)
                pending = self._queue.popleft()
                self._busy = True
            try:
                self._record(pending.event)
                logger.debug("audit: recorded %s", pending.describe)
            except Exception:  # noqa: BLE001 - the worker outlives any one event's failure
                logger.exception("audit: could not record %s in the run's audit log", pending.describe)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every event submitted so far is recorded (or failed); False if ``timeout_s`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and not self._busy, timeout=timeout_s)

    def flush_before_exit(self) -> None:
        """Flush for at most the exit timeout as the process ends; log how many events it leaves unrecorded."""
        if not self.flush(self._exit_timeout_s):
            with self._changed:
                waiting = len(self._queue) + int(self._busy)
            logger.error("audit: %d event(s) not recorded in the run's audit log before this process ends "
                         "(waited %.0f s)", waiting, self._exit_timeout_s)  # fmt: skip


#: This process's recorder, fed by the hooks of :data:`audit_trail_listener`.
audit_event_recorder = AuditEventRecorder()


def flush(timeout_s: float = EXIT_FLUSH_TIMEOUT_S) -> bool:
    """Wait until the listener's events queued in this process are recorded; False if ``timeout_s`` passed first."""
    return audit_event_recorder.flush(timeout_s)


def _submit(describe: str, build: Callable[[], AuditEvent]) -> None:
    """Build the event now (the task instance or run as it is) and queue it; log, never raise, on failure."""
    try:
        event = build()
    except Exception:  # noqa: BLE001 - a listener must never fail the task or the scheduler
        logger.exception("audit: could not record %s in the run's audit log", describe)
        return
    audit_event_recorder.submit(describe, event)


class AuditTrailListener:
    """The hooks Airflow calls; see the module docstring for where each runs."""

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self._task(task_instance, "running", previous_state)

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._task(task_instance, "success", previous_state)

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: BaseException | str | None) -> None:
        # Also called for a failure that will be retried: the task instance's own state then says up_for_retry.
        retried = str(getattr(task_instance, "state", "")) == "up_for_retry"
        self._task(task_instance, "up_for_retry" if retried else "failed", previous_state, error)

    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        self._dag_run(dag_run, "running", msg)

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self._dag_run(dag_run, "success", msg)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self._dag_run(dag_run, "failed", msg)

    @hookimpl
    def before_stopping(self, component: Any) -> None:
        # The last hook Airflow calls in a scheduler or task process: what is queued is recorded first, bounded.
        audit_event_recorder.flush_before_exit()

    @staticmethod
    def _task(task_instance: Any, state: str, previous_state: Any, error: BaseException | str | None = None) -> None:
        try:
            if not _is_securetrain_task(task_instance):
                return
            describe = f"task {task_instance.dag_id}.{task_instance.task_id} ({task_instance.run_id}) {state}"
        except Exception:  # noqa: BLE001
            logger.exception("audit: could not read the task instance of a %s state change", state)
            return
        _submit(describe, lambda: task_state_event(task_instance, state, previous_state, error))

    @staticmethod
    def _dag_run(dag_run: Any, state: str, msg: str) -> None:
        try:
            if not _is_securetrain_run(dag_run):
                return
            describe = f"DAG run {dag_run.dag_id} ({dag_run.run_id}) {state}"
        except Exception:  # noqa: BLE001
            logger.exception("audit: could not read the DAG run of a %s state change", state)
            return
        _submit(describe, lambda: dag_run_state_event(dag_run, state, msg))


#: The instance the plugin registers.
audit_trail_listener = AuditTrailListener()
