"""Stage 6, cleanup (trigger rule ``all_done``: runs whatever happened before)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, Context, TriggerRule
from securetrain.airflow.audit import record_events
from securetrain.airflow.failures import fail_closed
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.airflow.locations import CHECKPOINTS_CONTAINER, MODELS_CONTAINER, checkpoint_prefix, job_run_id
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource
from securetrain.core.contracts.stages import CleanupResult
from securetrain.core.cvm_client import CvmConflict, CvmJobNotFound
from securetrain.core.storage import BlobNotFound, ContainerNotFound


class CleanupOperator(BaseOperator):
    """Ends the run cleanly: stops its job, releases the CVM, deletes its temporary blobs; keeps logs.

    - a job of this run that is still running is cancelled (it stops at a safe point);
    - the CVM is released (azure backend: deallocated);
    - the run's checkpoints and its sealed model output are deleted: the registry keeps its own copy of a
      registered model, and checkpoints are bound to this run (their MAC names it) so no other run can
      resume from them;
    - the TEE's keys never left the TEE's memory: the agent drops them when the job ends;
    - audit logs and reports are kept.

    Returns (XCom) a :class:`~securetrain.core.contracts.stages.CleanupResult`.
    """

    ui_color = "#eeeeee"

    def __init__(
        self,
        *,
        cvm_conn_id: str = ConfidentialVmHook.default_conn_name,
        storage_conn_id: str = SecureStorageHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.cvm_conn_id = cvm_conn_id
        self.storage_conn_id = storage_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from securetrain.core.contracts.job_spec import job_id_for_run  # noqa: PLC0415 - keeps DAG parsing light

        run = job_run_id(context["dag"].dag_id, context["run_id"])
        cancelled = False
        cvm = ConfidentialVmHook(self.cvm_conn_id)
        with fail_closed("cleanup"):
            with cvm.get_conn() as client:
                try:
                    job = client.job(job_id_for_run(run))
                    if not job.state.finished:
                        client.cancel(job.job_id)
                        cancelled = True
                        self.log.info("cancelled job %s of this run (it stops at its next safe point)", job.job_id)
                except (CvmJobNotFound, CvmConflict):
                    pass  # never submitted, or it finished meanwhile
            released = cvm.release()
            self.log.info("%s", released)
            deleted = 0
            with SecureStorageHook(self.storage_conn_id).blob_store() as store:
                temporary = [(CHECKPOINTS_CONTAINER, info.name) for info in _listed(store, CHECKPOINTS_CONTAINER, checkpoint_prefix(run))]
                temporary += [(MODELS_CONTAINER, info.name) for info in _listed(store, MODELS_CONTAINER, checkpoint_prefix(run))]
                for container, name in temporary:
                    try:
                        store.delete(container, name)
                        deleted += 1
                    except BlobNotFound:
                        pass
                record_events(store, run, [AuditEvent.now(EventKind.CLEANUP_DONE, EventSource.PIPELINE, run_id=run, details={
                    "job_cancelled": cancelled, "deleted_blobs": deleted, "cvm": released})])  # fmt: skip
            self.log.info("deleted %d temporary blob(s) of run %s; audit logs and reports are kept", deleted, run)
        return CleanupResult(job_cancelled=cancelled, deleted_blobs=deleted, cvm=released).model_dump(mode="json")


def _listed(store: Any, container: str, prefix: str) -> list[Any]:
    try:
        return list(store.list_blobs(container, prefix))
    except ContainerNotFound:
        return []
