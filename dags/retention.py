"""retention: daily, delete checkpoints and temporary blobs past their container's maximum age.

Deleting a sealed blob crypto-shreds it: its data key exists only wrapped in its own header. Audit logs,
reports and datasets are never touched; the newest version of every registered model is always kept (a
policy that would delete one fails the run and deletes nothing). ``dry_run`` (default on) lists what would
be deleted and deletes nothing. Every run records a ``retention`` event. See docs/maintenance.md.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, task
from securetrain.airflow.pipeline import securetrain_dag

#: The default policy: a run's checkpoints and unregistered model output are temporary (cleanup deletes
#: them at the end of a run; this catches runs that never reached cleanup); registered versions are kept.
DEFAULT_POLICY = {"checkpoints": {"max_age_days": 7}, "models": {"max_age_days": 7}}

with securetrain_dag(
    "retention",
    description="Delete (crypto-shred) checkpoints and temporary blobs past the retention policy; dry run by default",
    schedule="@daily",
    max_active_runs=1,
    params={
        # On by default: deletion cannot be undone (it destroys the data keys), so a run started with the
        # defaults, by the schedule or by a click, only lists; deleting is a deliberate choice.
        "dry_run": Param(True, type="boolean", title="Dry run",
                         description="List what would be deleted; delete nothing. Turn off to delete."),
        "policy": Param(DEFAULT_POLICY, type="object", title="Retention policy",
                        description='Maximum age per container, e.g. {"checkpoints": {"max_age_days": 7}}; '
                                    "checkpoints, models and model-registry may be named"),
    },  # fmt: skip
    tags=["maintenance"],
    doc_md=__doc__,
):

    @task(retries=0)
    def apply_retention_policy(params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
        from securetrain.airflow.failures import fail_closed  # noqa: PLC0415 - keeps DAG parsing light
        from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415
        from securetrain.airflow.locations import job_run_id  # noqa: PLC0415
        from securetrain.airflow.maintenance import run_retention  # noqa: PLC0415

        run = job_run_id(dag_run.dag_id, dag_run.run_id)
        with fail_closed("retention"), SecureStorageHook().blob_store() as store:
            outcome = run_retention(store, params["policy"], dry_run=params["dry_run"], audit_run=run)
        listed = outcome["would_delete"] if outcome["dry_run"] else outcome["deleted"]
        verb = "would delete" if outcome["dry_run"] else "deleted"
        print(f"retention {verb} {len(listed)} blob(s); recorded in audit log {run}")
        for item in listed:
            print(f"  {verb}: {item['container']}/{item['blob']} ({item['age_days']} days old)")
        return outcome

    apply_retention_policy()
