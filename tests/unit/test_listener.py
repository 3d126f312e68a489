"""The audit-trail listener: its hooks match Airflow's specs, its events, and that it never raises."""

from __future__ import annotations

import datetime
import logging
import sys
import types
from pathlib import Path

import pytest

from airflow._shared.listeners.spec import taskinstance
from airflow.listeners.listener import ListenerManager
from airflow.listeners.spec import dagrun
from securetrain.core.audit.events import EventKind, EventSource

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


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
    manager.add_hookspecs(taskinstance)
    manager.add_hookspecs(dagrun)
    manager.add_listener(listener_module.audit_trail_listener)  # pluggy checks every hook's name and arguments
    names = {impl.function.__name__ for hook in manager.pm.get_hookcallers(listener_module.audit_trail_listener)
             for impl in hook.get_hookimpls()}  # fmt: skip
    assert {"on_task_instance_running", "on_task_instance_success", "on_task_instance_failed",
            "on_dag_run_running", "on_dag_run_success", "on_dag_run_failed"} <= names  # fmt: skip


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
    # No storage connection is defined here, so recording fails: the hook must log it and return.
    monkeypatch.delenv("AIRFLOW_CONN_SECURETRAIN_STORAGE", raising=False)
    listener = listener_module.audit_trail_listener
    with caplog.at_level(logging.ERROR, logger="securetrain.airflow.listener"):
        listener.on_task_instance_failed(previous_state="running", task_instance=_task_instance("securetrain"),
                                         error=RuntimeError("boom"))  # fmt: skip
        listener.on_dag_run_failed(dag_run=types.SimpleNamespace(dag_id="secure_training", run_id="r",
                                                                 dag=_dag("securetrain")), msg="task_failure")  # fmt: skip
    assert [record.levelno for record in caplog.records] == [logging.ERROR, logging.ERROR]
    assert "could not record task secure_training.train" in caplog.records[0].getMessage()


def test_dags_without_the_securetrain_tag_are_not_recorded(listener_module, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="securetrain.airflow.listener"):
        listener_module.audit_trail_listener.on_task_instance_success(previous_state=None,
                                                                      task_instance=_task_instance("other"))  # fmt: skip
    assert caplog.records == []
