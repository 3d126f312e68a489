"""access_review: weekly, who holds which Key Vault role and what each identity did with it.

From the vault's role assignments, its access log and the audit logs (each verified): per identity its
roles, requests by operation and decision, keys touched, denials; findings for a reviewer (requests
without a role, roles unused in the period, denied requests, audit logs that do not verify). Written to
``reports/access-review/<end time>.json`` and ``.md``. See docs/maintenance.md.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, task
from securetrain.airflow.pipeline import securetrain_dag

with securetrain_dag(
    "access_review",
    description="Identities, roles and what each accessed, from the Key Vault access log and the audit logs",
    schedule="@weekly",
    max_active_runs=1,
    params={
        "period_days": Param(7, type="integer", minimum=1, maximum=366, title="Period (days before the run)"),
    },
    tags=["maintenance"],
    doc_md=__doc__,
):

    @task
    def review_access(params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
        import datetime  # noqa: PLC0415

        from securetrain.airflow.failures import fail_closed  # noqa: PLC0415 - keeps DAG parsing light
        from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415
        from securetrain.airflow.maintenance import write_access_review  # noqa: PLC0415

        until = datetime.datetime.now(datetime.UTC)
        since = until - datetime.timedelta(days=params["period_days"])
        prefix = f"access-review/{until.strftime('%Y%m%dT%H%M%SZ')}"
        with fail_closed("access review"), SecureStorageHook().blob_store() as store:
            written = write_access_review(store, since=since, until=until, report_prefix=prefix)
        print(f"access review written to {written['json']} and {written['markdown']}")
        for finding in written["findings"]:
            print(f"  finding: {finding}")
        return written

    review_access()
