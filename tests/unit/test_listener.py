"""The audit-trail listener: its hooks match Airflow's specs, its events, that it never raises, and that its
hooks only queue: a worker thread records, a full queue drops and says so, a process that ends flushes."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from airflow._shared.listeners.spec import lifecycle, taskinstance
from airflow.listeners.listener import ListenerManager
from airflow.listeners.spec import dagrun
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"


@pytest.fixture
def listener_module() -> types.ModuleType:
    from securetrain.airflow import listener  # noqa: PLC0415

    return listener


def _dag(*tags: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(tags=list(tags))


def _task_instance(*tags: str) -> types.SimpleNamespace:
    """The attributes Airflow's RuntimeTaskInstance carries that the listener reads."""
    return types.SimpleNamespace(dag_id="secure_training", run_id="manual__2026-05-01", task_id="train",
                                 map_index=-1, try_number=1, task=types.SimpleNamespace(dag=_dag(*tags)),
                                 end_date=datetime.datetime(2026, 5, 1, 12, 0, 5, tzinfo=datetime.UTC))  # fmt: skip


def test_the_hooks_are_accepted_by_airflows_listener_specs(listener_module) -> None:
    manager = ListenerManager()
    manager.add_hookspecs(lifecycle)
    manager.add_hookspecs(taskinstance)
    manager.add_hookspecs(dagrun)
    manager.add_listener(listener_module.audit_trail_listener)  # pluggy checks every hook's name and arguments
    names = {impl.function.__name__ for hook in manager.pm.get_hookcallers(listener_module.audit_trail_listener)
             for impl in hook.get_hookimpls()}  # fmt: skip
    assert {"on_task_instance_running", "on_task_instance_success", "on_task_instance_failed",
            "on_dag_run_running", "on_dag_run_success", "on_dag_run_failed", "before_stopping"} <= names  # fmt: skip


def test_the_plugin_registers_the_listener(listener_module, monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow puts the plugins folder on sys.path and imports the plugin files from there; so does this test.
    monkeypatch.syspath_prepend(str(PLUGINS))
    import securetrain_plugin  # noqa: PLC0415

    assert listener_module.audit_trail_listener in securetrain_plugin.SecuretrainPlugin.listeners
    monkeypatch.delitem(sys.modules, "securetrain_plugin")


def test_task_and_dag_run_events(listener_module) -> None:
    error = RuntimeError("x" * 5000)
    event = listener_module.task_state_event(_task_instance("securetrain"), "failed", "running", error)
    assert event.kind is EventKind.TASK_STATE and event.source is EventSource.AIRFLOW
    assert event.run_id.startswith("secure_training.manual__2026-05-01.")
    assert event.time == "2026-05-01T12:00:05.000000Z"
    assert event.details["task_id"] == "train" and event.details["state"] == "failed"
    assert event.details["error"].startswith("RuntimeError: xxx") and len(event.details["error"]) == 2000
    run = types.SimpleNamespace(dag_id="secure_training", run_id="manual__2026-05-01", end_date=None)
    dag_event = listener_module.dag_run_state_event(run, "success", "success")
    assert dag_event.kind is EventKind.DAG_RUN_STATE and dag_event.run_id == event.run_id


def test_a_listener_failure_is_logged_never_raised(listener_module, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # No storage connection is defined here, so recording fails: the worker must log it and go on.
    monkeypatch.delenv("AIRFLOW_CONN_SECURETRAIN_STORAGE", raising=False)
    listener = listener_module.audit_trail_listener
    with caplog.at_level(logging.ERROR, logger="securetrain.airflow.listener"):
        listener.on_task_instance_failed(previous_state="running", task_instance=_task_instance("securetrain"),
                                         error=RuntimeError("boom"))  # fmt: skip
        listener.on_dag_run_failed(dag_run=types.SimpleNamespace(dag_id="secure_training", run_id="r",
                                                                 dag=_dag("securetrain")), msg="task_failure")  # fmt: skip
        assert listener_module.flush(timeout_s=60)
    assert [record.levelno for record in caplog.records] == [logging.ERROR, logging.ERROR]
    assert "could not record task secure_training.train" in caplog.records[0].getMessage()
    assert "could not record DAG run secure_training (r) failed" in caplog.records[1].getMessage()
    assert all(record.threadName == "securetrain-audit-recorder" for record in caplog.records)


def test_dags_without_the_securetrain_tag_are_not_recorded(listener_module, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="securetrain.airflow.listener"):
        listener_module.audit_trail_listener.on_task_instance_success(previous_state=None,
                                                                      task_instance=_task_instance("other"))  # fmt: skip
    assert caplog.records == []


def _event(run: str = "secure_training.manual__1.0123456789ab", state: str = "running") -> AuditEvent:
    return AuditEvent.now(EventKind.TASK_STATE, EventSource.AIRFLOW, run_id=run, details={"state": state})


class BlockingRecord:
    """A record function that holds the worker until released, and keeps what it recorded, in order."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.recorded: list[AuditEvent] = []

    def __call__(self, event: AuditEvent) -> None:
        self.started.set()
        assert self.release.wait(timeout=30)
        if event.details["state"] == "boom":
            raise RuntimeError("storage is down")
        self.recorded.append(event)


def test_a_hook_returns_while_storage_is_slow_and_the_worker_records_in_order(listener_module) -> None:
    record = BlockingRecord()
    recorder = listener_module.AuditEventRecorder(record)
    began = time.monotonic()
    for state in ("running", "boom", "success"):
        assert recorder.submit(f"event {state}", _event(state=state))
    assert time.monotonic() - began < 1.0  # nothing waited for the (blocked) record
    assert record.started.wait(timeout=10) and recorder.flush(timeout_s=0.1) is False
    record.release.set()
    assert recorder.flush(timeout_s=30)
    # The failing event was logged and skipped; the worker went on with the next one.
    assert [event.details["state"] for event in record.recorded] == ["running", "success"]


def test_a_full_queue_drops_the_event_with_an_error_and_never_blocks(listener_module, caplog) -> None:
    record = BlockingRecord()
    recorder = listener_module.AuditEventRecorder(record, capacity=2)
    assert recorder.submit("first", _event(state="first"))
    assert record.started.wait(timeout=10)  # the worker holds "first"; two more fill the queue
    assert recorder.submit("second", _event(state="second")) and recorder.submit("third", _event(state="third"))
    with caplog.at_level(logging.ERROR, logger="securetrain.airflow.listener"):
        began = time.monotonic()
        assert recorder.submit("task x.y (r) success", _event(state="fourth")) is False
        assert time.monotonic() - began < 1.0
    assert recorder.dropped == 1
    assert "dropped task x.y (r) success: 2 events are already waiting" in caplog.records[0].getMessage()
    record.release.set()
    assert recorder.flush(timeout_s=30)
    assert [event.details["state"] for event in record.recorded] == ["first", "second", "third"]


def test_the_dropped_count_is_exact_under_concurrent_hooks(listener_module) -> None:
    record = BlockingRecord()
    recorder = listener_module.AuditEventRecorder(record, capacity=1)
    assert recorder.submit("held", _event()) and record.started.wait(timeout=10)
    assert recorder.submit("queued", _event())
    threads = [threading.Thread(target=lambda: [recorder.submit("x", _event()) for _ in range(200)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.dropped == 1600
    record.release.set()
    assert recorder.flush(timeout_s=30) and len(record.recorded) == 2


def test_a_forked_child_starts_with_an_empty_queue_of_its_own(listener_module) -> None:
    record = BlockingRecord()
    recorder = listener_module.AuditEventRecorder(record)
    assert recorder.submit("parent's", _event(state="parent")) and record.started.wait(timeout=10)
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's to record (its worker does that), and a worker of its own
        ok = recorder.flush(timeout_s=0) and recorder.dropped == 0
        record.release.set()  # the child's copy of it
        ok = ok and recorder.submit("child's", _event(state="child")) and recorder.flush(timeout_s=10)
        ok = ok and [event.details["state"] for event in record.recorded] == ["child"]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    record.release.set()
    assert recorder.flush(timeout_s=30)
    assert [event.details["state"] for event in record.recorded] == ["parent"]


def test_a_process_that_ends_right_after_its_hook_records_the_event_first(tmp_path: Path) -> None:
    written = tmp_path / "recorded.txt"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from securetrain.airflow.listener import AuditEventRecorder
        from securetrain.core.audit.events import AuditEvent, EventKind, EventSource

        def slow_record(event):
            time.sleep(1.0)  # storage taking its time
            Path({str(written)!r}).write_text(event.details["state"])

        recorder = AuditEventRecorder(slow_record)
        recorder.submit("last event", AuditEvent.now(EventKind.TASK_STATE, EventSource.AIRFLOW, run_id="r",
                                                     details={{"state": "success"}}))
        # the interpreter exits here: the atexit flush waits for the worker
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert written.read_text() == "success"
