"""key_rotation: monthly, a new KEK version; every sealed blob's data key rewrapped to it; verified; audited.

1. ``new_kek_version``: the pipeline identity (Crypto Officer) rotates the KEK in Key Vault (same size,
   exportable, same release policy). With ``resume`` it makes none and takes the latest version.
2. ``rewrap``: the ``key-rotator`` identity (Crypto User: unwrap only, never release) has the vault unwrap
   each blob's data key with the version that wrapped it; it is wrapped to the new version's public key and
   the blob replaced atomically, only if unchanged since read. A crash leaves each blob old or new, both
   readable; the retry (or a run with ``resume``) finishes.
3. ``verify``: every sealed blob names the new version and its thumbprint; the vault opens a sample under
   the new version (Airflow never holds the KEK's private half).
4. ``audit`` (whatever happened before): a ``rotation`` event in this run's audit log, marked complete or
   not; an incomplete rotation fails the run. See docs/maintenance.md.
"""

from __future__ import annotations

from typing import Any

import pendulum

from airflow.sdk import DAG, Param, TriggerRule, task
from operators.maintenance import DEFAULT_VERIFY_SAMPLE
from operators.pipeline import DEFAULT_ARGS
from securetrain.keyvault import KEK_NAME

#: The connection whose identity unwraps data keys during rotation (the stack's ``key-rotator``).
ROTATOR_CONN_ID = "securetrain_keyvault_rotator"

with DAG(
    dag_id="key_rotation",
    description="New KEK version, every sealed blob's data key rewrapped to it, verified, audited",
    schedule="@monthly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # The rewrap holds data keys in memory: its own worker queue, away from the shared workers (docs/maintenance.md).
    default_args={**DEFAULT_ARGS, "queue": "key-rotator"},
    params={
        "key": Param(KEK_NAME, type="string", pattern=r"^[0-9A-Za-z-]{1,127}$", title="KEK name"),
        "resume": Param(False, type="boolean", title="Resume",
                        description="Make no new version: finish rewrapping to the latest one (after an interrupted rotation)"),
        "verify_sample": Param(DEFAULT_VERIFY_SAMPLE, type="integer", minimum=1, maximum=1000, title="Blobs the vault opens to verify"),
    },  # fmt: skip
    tags=["securetrain", "maintenance"],
    doc_md=__doc__,
):

    @task
    def new_kek_version(params: dict[str, Any]) -> str:
        from operators.hooks.keyvault import KeyVaultHook  # noqa: PLC0415 - keeps DAG parsing light

        vault = KeyVaultHook()
        kek = vault.latest_kek(params["key"]) if params["resume"] else vault.new_kek_version(params["key"])
        print(f"{'resuming the rotation to' if params['resume'] else 'new KEK version'} {kek.kek_id}")
        return kek.kek_id

    @task
    def rewrap(kek_id: str) -> dict[str, Any]:
        from operators.failures import fail_closed  # noqa: PLC0415
        from operators.hooks.keyvault import KeyVaultHook  # noqa: PLC0415
        from operators.hooks.storage import SecureStorageHook  # noqa: PLC0415
        from operators.maintenance import rewrap_containers  # noqa: PLC0415

        with fail_closed("rewrap"), SecureStorageHook().blob_store() as store:
            kek = KeyVaultHook().kek_public_key(kek_id)
            return rewrap_containers(store, kek, KeyVaultHook(ROTATOR_CONN_ID).unwrap_clients())

    @task(retries=0)
    def verify(kek_id: str, params: dict[str, Any]) -> dict[str, Any]:
        from operators.failures import fail_closed  # noqa: PLC0415
        from operators.hooks.keyvault import KeyVaultHook  # noqa: PLC0415
        from operators.hooks.storage import SecureStorageHook  # noqa: PLC0415
        from operators.maintenance import verify_rotation  # noqa: PLC0415

        with fail_closed("verify"), SecureStorageHook().blob_store() as store:
            kek = KeyVaultHook().kek_public_key(kek_id)
            return verify_rotation(store, kek, KeyVaultHook(ROTATOR_CONN_ID).unwrap_clients(),
                                   sample_size=params["verify_sample"])  # fmt: skip

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def audit(ti: Any, dag_run: Any) -> dict[str, Any]:
        """Runs whatever happened before: a failed or partial rotation is recorded too, then fails the run."""
        from airflow.sdk.exceptions import AirflowFailException  # noqa: PLC0415
        from operators.audit import record_events  # noqa: PLC0415
        from operators.hooks.storage import SecureStorageHook  # noqa: PLC0415
        from operators.locations import job_run_id  # noqa: PLC0415
        from securetrain.audit.events import AuditEvent, EventKind, EventSource  # noqa: PLC0415

        run = job_run_id(dag_run.dag_id, dag_run.run_id)
        kek_id = ti.xcom_pull(task_ids="new_kek_version")
        rewrapped = ti.xcom_pull(task_ids="rewrap")
        verified = ti.xcom_pull(task_ids="verify")
        details: dict[str, Any] = {"kek_id": kek_id, "complete": rewrapped is not None and verified is not None}
        if rewrapped is not None:
            details |= {"rewrapped": len(rewrapped["rewrapped"]), "already_current": len(rewrapped["already_current"]),
                        "not_this_kek": len(rewrapped["not_this_kek"])}  # fmt: skip
        if verified is not None:
            details |= {"verified": verified["verified"], "sample_opened": verified["sample_opened"]}
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
    rewrapped = rewrap(kek_id)
    verified = verify(kek_id)
    rewrapped >> verified  # verify what the rewrap left, not the blobs while it works
    [rewrapped, verified] >> audit()
