"""An Airflow listener that writes the task and DAG-run state changes of securetrain's DAGs into the run's audit log.

Registered through the plugin's ``listeners`` (securetrain/airflow/plugin.py). Airflow 3 calls these hooks
in different processes (see docs/monitoring.md):

* ``on_task_instance_running`` / ``_success`` / ``_failed`` run in the **task's own process** on the
  worker (``airflow.sdk.execution_time.task_runner``), after the task's callbacks; ``_success`` and
  ``_failed`` also run in the **API server** when a person marks a task instance in the UI;
* ``on_dag_run_running`` / ``_success`` / ``_failed`` run in the **scheduler** (``DagRun.update_state``)
  and, when a run is marked by hand, in the API server.

Each becomes one ``task_state`` or ``dag_run_state`` event (source ``airflow``) appended to the run's log,
``audit/<job_run_id(dag_id, run_id)>.jsonl`` with :func:`securetrain.airflow.audit.record_events`, and a signed
checkpoint. Only DAGs tagged ``securetrain`` are recorded.

A listener must never fail the task or stall the scheduler on a fault of its own: Airflow already logs
and swallows a listener's exception, and these hooks catch and log every error themselves too, naming
the event that was not recorded. Such a gap is visible to a reviewer: the ``audit`` task's own events,
and the other state changes of the run, are still in the log.
"""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

if TYPE_CHECKING:
    from securetrain.core.audit.events import AuditEvent

logger = logging.getLogger(__name__)

#: The tag that marks a DAG as securetrain's (every DAG in dags/ carries it).
SECURETRAIN_TAG = "securetrain"
#: An error message is cut to this many characters in the event (details stay small).
MAX_ERROR_CHARS = 2000


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


def _record(describe: str, build: Any) -> None:
    """Build the event and append it to its run's log; log, never raise, on any failure."""
    try:
        from securetrain.airflow.audit import record_events  # noqa: PLC0415
        from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415

        event = build()
        with SecureStorageHook().blob_store() as store:
            record_events(store, event.run_id, [event])
        logger.debug("audit: recorded %s", describe)
    except Exception:  # noqa: BLE001 - a listener must never fail the task or the scheduler
        logger.exception("audit: could not record %s in the run's audit log", describe)


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

    @staticmethod
    def _task(task_instance: Any, state: str, previous_state: Any, error: BaseException | str | None = None) -> None:
        try:
            if not _is_securetrain_task(task_instance):
                return
            describe = f"task {task_instance.dag_id}.{task_instance.task_id} ({task_instance.run_id}) {state}"
        except Exception:  # noqa: BLE001
            logger.exception("audit: could not read the task instance of a %s state change", state)
            return
        _record(describe, lambda: task_state_event(task_instance, state, previous_state, error))

    @staticmethod
    def _dag_run(dag_run: Any, state: str, msg: str) -> None:
        try:
            if not _is_securetrain_run(dag_run):
                return
            describe = f"DAG run {dag_run.dag_id} ({dag_run.run_id}) {state}"
        except Exception:  # noqa: BLE001
            logger.exception("audit: could not read the DAG run of a %s state change", state)
            return
        _record(describe, lambda: dag_run_state_event(dag_run, state, msg))


#: The instance the plugin registers.
audit_trail_listener = AuditTrailListener()
