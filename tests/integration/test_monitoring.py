"""The listener and the run report against the local stack's Azurite: written, signed, read back."""

from __future__ import annotations

import datetime
import io
import json
import types
import uuid

import pytest

from securetrain.airflow.locations import REPORTS_CONTAINER, job_run_id
from securetrain.core.alerts import AlertThresholds, evaluate
from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import BlobAuditStore
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource
from securetrain.core.model_registry import REGISTRY_CONTAINER
from securetrain.core.run_report import run_record, write_run_report
from securetrain.core.storage import BlobStore

pytestmark = pytest.mark.integration


@pytest.fixture
def airflow_storage(local_stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage connection and audit key as the local Airflow environment gives them to every process."""
    monkeypatch.setenv("AIRFLOW_CONN_SECURETRAIN_STORAGE", local_stack.env["AIRFLOW_CONN_SECURETRAIN_STORAGE"])
    monkeypatch.setenv("SECURETRAIN_AUDIT_SIGNING_KEY", str(local_stack.layout.audit_signing_key))


def test_the_listener_appends_signed_state_changes_to_the_runs_audit_log(local_stack, airflow_storage) -> None:
    from securetrain.airflow import listener as securetrain_listener  # noqa: PLC0415

    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    dag = types.SimpleNamespace(tags=["securetrain"])
    ti = types.SimpleNamespace(dag_id="secure_training", run_id=run_id, task_id="train", map_index=-1, try_number=1,
                               task=types.SimpleNamespace(dag=dag), end_date=datetime.datetime.now(datetime.UTC))  # fmt: skip
    listener = securetrain_listener.audit_trail_listener
    listener.on_task_instance_running(previous_state="queued", task_instance=ti)
    ti.state = "up_for_retry"  # what the task runner sets before calling the hook for a failure to be retried
    listener.on_task_instance_failed(previous_state="running", task_instance=ti, error=TimeoutError("slow"))
    ti.state = "failed"
    listener.on_task_instance_failed(previous_state="running", task_instance=ti, error=RuntimeError("refused"))
    listener.on_dag_run_failed(dag_run=types.SimpleNamespace(dag_id="secure_training", run_id=run_id, dag=dag,
                                                             end_date=None), msg="task_failure")  # fmt: skip
    assert securetrain_listener.flush(timeout_s=60)  # the hooks only queued; the worker thread records

    key = load_or_create_signing_key(local_stack.layout.audit_signing_key)
    with BlobAuditStore.from_settings(local_stack.settings(), job_run_id("secure_training", run_id)) as store:
        log = AuditLog(store)
        verdict = log.verify(key.public_key())  # every entry covered by a signed checkpoint
        events = [entry.event for entry in log.entries()]
    assert verdict.entries == 4
    assert [(e.kind, e.details["state"]) for e in events] == [
        (EventKind.TASK_STATE, "running"), (EventKind.TASK_STATE, "up_for_retry"), (EventKind.TASK_STATE, "failed"),
        (EventKind.DAG_RUN_STATE, "failed")]  # fmt: skip
    assert events[2].details["error"] == "RuntimeError: refused"


def test_the_run_report_is_written_to_storage_with_the_model_signatures(local_stack) -> None:
    run = f"secure_training.manual__{uuid.uuid4().hex[:8]}.0123456789ab"
    manifest = {"name": "bc", "version": 1, "signatures": [{"kind": "pipeline", "signature": "5a" * 32}]}
    body = json.dumps(manifest).encode()
    denied = [AuditEvent(EventKind.ACCESS_DENIED, run, EventSource.KEYVAULT, f"2026-05-01T12:00:0{i}Z",
                         {"identity": "stranger"}) for i in range(3)]  # fmt: skip
    released = AuditEvent(EventKind.KEY_RELEASED, run, EventSource.KEYVAULT, "2026-05-01T12:00:09Z", {"key": "kek"})
    events = [*denied, released]
    with BlobStore.from_settings(local_stack.settings()) as store:
        for container in (REGISTRY_CONTAINER, REPORTS_CONTAINER):
            store.ensure_container(container)
        store.upload_stream(REGISTRY_CONTAINER, f"{run}/manifest.json", io.BytesIO(body), length=len(body))
        record = run_record(
            store, run=run, dag_run_id="manual__x",
            results={"register_model": {"name": "bc", "version": 1, "manifest_blob": f"{REGISTRY_CONTAINER}/{run}/manifest.json"},
                     "train": {"history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.3}]}},
            audit={"verdict": "verified", "entries": 4}, events=events,
            alerts=evaluate(events, AlertThresholds()),
        )  # fmt: skip
        blob = write_run_report(store, REPORTS_CONTAINER, record)
        buffer = io.BytesIO()
        store.download_to(REPORTS_CONTAINER, blob.split("/", 1)[1], buffer)
    html = buffer.getvalue().decode()
    assert blob == f"{REPORTS_CONTAINER}/{run}/report.html"
    assert "5a" * 32 in html and "repeated_access_denied" in html and "data:image/png;base64," in html
    assert "key_released" in html


