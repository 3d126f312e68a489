"""key_rotation: monthly, a new KEK version; every sealed blob's data key rewrapped to it in the TEE; verified; audited.

``new_kek_version`` (the ``key-rotator`` identity: make a new version, nothing else; with ``resume``, the latest
one) >> ``rewrap`` (in the TEE, which signs what it did; Airflow never holds a data key) >> ``verify`` (every
sealed blob's header names the new version) >> ``audit`` (whatever happened before; an incomplete rotation is
recorded, then fails the run). See docs/maintenance.md.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, TriggerRule, task
from securetrain.airflow.pipeline import securetrain_dag
from securetrain.core.keyvault import KEK_NAME

#: The connection whose identity makes the new KEK version (the stack's ``key-rotator``: rotate only).
ROTATOR_CONN_ID = "securetrain_keyvault_rotator"

with securetrain_dag(
    "key_rotation",
    description="New KEK version, every sealed blob's data key rewrapped to it in the TEE, verified, audited",
    schedule="@monthly",
    max_active_runs=1,
    # Only the workers of this queue need the rotator's credential (docs/maintenance.md).
    queue="key-rotator",
    params={
        "key": Param(KEK_NAME, type="string", pattern=r"^[0-9A-Za-z-]{1,127}$", title="KEK name"),
        "resume": Param(False, type="boolean", title="Resume",
                        description="Make no new version: finish rewrapping to the latest one (after an interrupted rotation)"),
    },  # fmt: skip
    tags=["maintenance"],
    doc_md=__doc__,
):

    @task
    def new_kek_version(params: dict[str, Any]) -> str:
        from securetrain.airflow.environment import approved_release_policy  # noqa: PLC0415 - keeps DAG parsing light
        from securetrain.airflow.failures import fail_closed  # noqa: PLC0415
        from securetrain.airflow.hooks.keyvault import KeyVaultHook  # noqa: PLC0415

        with fail_closed("new_kek_version"):
            approved = approved_release_policy(None)
            if params["resume"]:
                kek = KeyVaultHook().latest_kek(params["key"], approved)
            else:
                kek = KeyVaultHook(ROTATOR_CONN_ID).new_kek_version(params["key"], approved)
        print(f"{'resuming the rotation to' if params['resume'] else 'new KEK version'} {kek.kek_id}")
        return kek.kek_id

    @task
    def rewrap(kek_id: str, ti: Any) -> dict[str, Any]:
        from securetrain.airflow.environment import approved_release_policy  # noqa: PLC0415
        from securetrain.airflow.failures import fail_closed  # noqa: PLC0415
        from securetrain.airflow.hooks.attestation import AttestationHook  # noqa: PLC0415
        from securetrain.airflow.hooks.cvm import ConfidentialVmHook  # noqa: PLC0415
        from securetrain.airflow.maintenance import SEALED_CONTAINERS  # noqa: PLC0415
        from securetrain.core.rotation import require_complete, rewrap_in_tee  # noqa: PLC0415

        with fail_closed("rewrap"):
            approved = approved_release_policy(None)
            attestation = AttestationHook()
            cvm = ConfidentialVmHook()
            cvm.start()
            try:
                with cvm.get_conn() as client:
                    statement = rewrap_in_tee(client, kek_id, SEALED_CONTAINERS,
                                              lambda token: attestation.validate(token, policy=approved))  # fmt: skip
            finally:
                print(cvm.release())
            # Kept for the audit step even when the checks below fail the task.
            ti.xcom_push(key="statement", value=statement)
            require_complete(statement)
        print(f"the TEE rewrapped {len(statement['rewrapped'])} blob(s) and checked {len(statement['dek_checked'])} data key(s)")
        return statement

    @task(retries=0)
    def verify(kek_id: str, statement: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        from securetrain.airflow.environment import approved_release_policy  # noqa: PLC0415
        from securetrain.airflow.failures import fail_closed  # noqa: PLC0415
        from securetrain.airflow.hooks.keyvault import KeyVaultHook  # noqa: PLC0415
        from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415
        from securetrain.airflow.maintenance import SEALED_CONTAINERS  # noqa: PLC0415
        from securetrain.core.rotation import verify_rotation  # noqa: PLC0415

        with fail_closed("verify"), SecureStorageHook().blob_store() as store:
            vault = KeyVaultHook()
            # Blobs of versions no approved TEE is released may stay (their owner re-seals or deletes them).
            other = vault.versions_under_other_policies(params["key"], approved_release_policy(None))
            summary = verify_rotation(store, vault.kek_public_key(kek_id), statement, SEALED_CONTAINERS, other_policies=other)
        if summary["left_under_another_policy"]:
            print(f"left on versions under another release policy (no approved TEE opens them): "
                  f"{', '.join(summary['left_under_another_policy'])}")  # fmt: skip
        return summary

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def audit(ti: Any, dag_run: Any) -> dict[str, Any]:
        """Runs whatever happened before: a failed or partial rotation is recorded too, then fails the run."""
        from airflow.sdk.exceptions import AirflowFailException  # noqa: PLC0415
        from securetrain.airflow.audit import record_events  # noqa: PLC0415
        from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415
        from securetrain.airflow.locations import job_run_id  # noqa: PLC0415
        from securetrain.core.audit.events import AuditEvent, EventKind, EventSource  # noqa: PLC0415

        run = job_run_id(dag_run.dag_id, dag_run.run_id)
        kek_id = ti.xcom_pull(task_ids="new_kek_version")
        statement = ti.xcom_pull(task_ids="rewrap", key="statement")
        verified = ti.xcom_pull(task_ids="verify")
        details: dict[str, Any] = {"kek_id": kek_id, "complete": verified is not None}
        if statement is not None:
            details |= {
                "rewrapped": len(statement["rewrapped"]), "already_current": len(statement["already_current"]),
                "not_this_kek": len(statement["not_this_kek"]), "dek_checked_in_tee": len(statement["dek_checked"]),
                "released_versions": statement["released_versions"], "refused": statement["refused"],
                "unreleasable": statement["unreleasable"], "changed_meanwhile": statement["changed_meanwhile"],
            }  # fmt: skip
        if verified is not None:
            details |= {"verified": verified["verified"], "sealed_after_the_rewrap": verified["sealed_after_the_rewrap"],
                        "left_under_another_policy": verified["left_under_another_policy"]}  # fmt: skip
        with SecureStorageHook().blob_store() as store:
            record_events(store, run, [AuditEvent.now(EventKind.ROTATION, EventSource.PIPELINE, run_id=run, details=details)])
        print(f"rotation recorded in audit log {run}: {details}")
        if not details["complete"]:
            raise AirflowFailException(
                f"the rotation to {kek_id} did not complete (see the failed task); every blob is still readable: "
                "trigger key_rotation with resume: true to finish it"
            )
        return {"log": run, **details}

    kek_id = new_kek_version()
    statement = rewrap(kek_id)
    verify(kek_id, statement) >> audit()
