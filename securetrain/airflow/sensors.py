"""Sensors on the confidential VM: its attestation before training, its health beside training.

Both defer to a trigger (the triggerer polls; no worker slot is held) when ``deferrable`` (the
``[operators] default_deferrable`` setting by default), and otherwise poke in ``reschedule`` mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, conf
from airflow.sdk.exceptions import AirflowException
from securetrain.airflow.enclave import attest_now, challenge_policy, watch_job
from securetrain.airflow.failures import SecurityCheckFailed, fail_closed
from securetrain.airflow.hooks.attestation import AttestationHook
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.keyvault import KeyVaultHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.airflow.locations import job_run_id
from securetrain.airflow.triggers import AttestationStatusTrigger, EnclaveHealthTrigger
from securetrain.core.attestation.claims import workload_binding
from securetrain.core.contracts.stages import AttestationResult
from securetrain.core.errors import SecuretrainError


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def _raise_event(stage: str, event: dict[str, Any]) -> None:
    if event["status"] == "security_event" or event.get("security_violation"):
        raise SecurityCheckFailed(f"{stage}: {event['message']}")
    if event["status"] == "error":
        raise AirflowException(f"{stage}: {event['message']}")


class AttestationStatusSensor(BaseSensorOperator):
    """Waits until the CVM proves, to Airflow itself, that it is an approved TEE (:func:`attest_now`): a token that
    fails fails the task without retry, an agent that cannot attest yet is asked again. Returns (XCom) the
    validated claims (:class:`~securetrain.core.contracts.stages.AttestationResult`).

    The claims are held to the KEK's release policy; in a run under ``contract`` (a digest), to the contract's
    approved workloads (:func:`~securetrain.airflow.enclave.challenge_policy`).
    """

    template_fields: Sequence[str] = ("kek_id", "contract")
    ui_color = "#f5e6a8"

    def __init__(
        self,
        *,
        kek_id: str,
        contract: str | None = None,
        deferrable: bool | None = None,
        cvm_conn_id: str = ConfidentialVmHook.default_conn_name,
        attestation_conn_id: str = AttestationHook.default_conn_name,
        keyvault_conn_id: str = KeyVaultHook.default_conn_name,
        storage_conn_id: str = SecureStorageHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 10)
        kwargs.setdefault("timeout", timedelta(minutes=15).total_seconds())
        super().__init__(**kwargs)
        self.kek_id = kek_id
        self.contract = contract
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.cvm_conn_id = cvm_conn_id
        self.attestation_conn_id = attestation_conn_id
        self.keyvault_conn_id = keyvault_conn_id
        self.storage_conn_id = storage_conn_id
        self._claims: dict[str, Any] | None = None

    def execute(self, context: Context) -> Any:
        if self.deferrable:
            self.defer(
                trigger=AttestationStatusTrigger(self.cvm_conn_id, self.attestation_conn_id, self.keyvault_conn_id,
                                                 self.kek_id, self.poke_interval, contract=self.contract or None,
                                                 storage_conn_id=self.storage_conn_id),  # fmt: skip
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout),
            )
        super().execute(context)
        return AttestationResult(self._claims).model_dump(mode="json")

    def poke(self, context: Context) -> bool:
        with fail_closed("attestation status"):
            try:
                policy = challenge_policy(self.kek_id, self.contract, keyvault_conn_id=self.keyvault_conn_id,
                                          storage_conn_id=self.storage_conn_id)  # fmt: skip
                self._claims = attest_now(ConfidentialVmHook(self.cvm_conn_id), AttestationHook(self.attestation_conn_id), policy)
            except SecuretrainError as exc:
                if exc.security_violation:
                    raise
                self.log.info("the TEE cannot attest yet: %s", exc)
                return False
        self._log_claims(self._claims)
        return True

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        _raise_event("attestation status", event)
        self._log_claims(event["claims"])
        return AttestationResult(event["claims"]).model_dump(mode="json")

    def _log_claims(self, claims: dict[str, Any]) -> None:
        self.log.info("the TEE attested for Airflow's nonce: %s, %s, policy %s", claims.get("x-ms-attestation-type"),
                      workload_binding(claims), claims.get("x-ms-policy-hash"))  # fmt: skip


class EnclaveHealthSensor(BaseSensorOperator):
    """Watches the enclave while this run's job trains (:func:`watch_job`); succeeds when the job has finished
    cleanly. A security event fails the task (no retry) and cancels the job."""

    template_fields: Sequence[str] = ("expected_tee",)
    ui_color = "#f5e6a8"

    def __init__(
        self,
        *,
        expected_tee: str | None = None,
        max_attestation_age_s: float = 3600,
        deferrable: bool | None = None,
        cvm_conn_id: str = ConfidentialVmHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 5)
        kwargs.setdefault("timeout", timedelta(hours=24).total_seconds())
        super().__init__(**kwargs)
        self.expected_tee = expected_tee
        self.max_attestation_age_s = max_attestation_age_s
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.cvm_conn_id = cvm_conn_id

    def _job_id(self, context: Context) -> str:
        from securetrain.core.contracts.job_spec import job_id_for_run  # noqa: PLC0415 - keeps DAG parsing light

        return job_id_for_run(job_run_id(context["dag"].dag_id, context["run_id"]))

    def execute(self, context: Context) -> Any:
        if self.deferrable:
            self.defer(
                trigger=EnclaveHealthTrigger(self.cvm_conn_id, self._job_id(context), self.expected_tee,
                                             self.max_attestation_age_s, self.poke_interval),  # fmt: skip
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout),
            )
        return super().execute(context)

    def poke(self, context: Context) -> bool:
        job_id = self._job_id(context)
        with fail_closed("enclave health"):
            watch = watch_job(ConfidentialVmHook(self.cvm_conn_id), job_id, expected_tee=self.expected_tee,
                              max_attestation_age_s=self.max_attestation_age_s)  # fmt: skip
        if watch.security_event is not None:
            self._security_event(job_id, watch.security_event)
        if watch.job_state is None:
            self.log.info("job %s not submitted yet", job_id)
        elif not watch.done:
            self.log.info("job %s %s; enclave healthy", job_id, watch.job_state)
        return watch.done

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        if event["status"] == "security_event":
            self._security_event(self._job_id(context), event["message"])
        _raise_event("enclave health", event)
        self.log.info("the job finished (%s) with the enclave healthy throughout", event.get("job_state"))

    def _security_event(self, job_id: str, reason: str) -> None:
        try:
            with ConfidentialVmHook(self.cvm_conn_id).get_conn() as client:
                client.cancel(job_id)
            self.log.error("security event: %s; cancelled job %s", reason, job_id)
        except SecuretrainError as exc:
            self.log.error("security event: %s; cancelling job %s failed too: %s", reason, job_id, exc)
        raise SecurityCheckFailed(f"enclave health: {reason}")
