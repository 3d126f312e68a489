"""Triggers: the long waits of the training stage and the sensors, run in Airflow's triggerer.

Each polls with the same synchronous code the operators use (in a worker thread, so the triggerer's
event loop never blocks) and fires one event: ``{"status": "done", ...}`` or ``{"status": "error",
"message", "security_violation"}``. A transient fault (agent restarting) is retried inside the poll by
the client's bounded retries; what is left is reported, and the operator decides.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from securetrain.airflow.enclave import attest_now, challenge_policy, watch_job
from securetrain.airflow.hooks.attestation import AttestationHook
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.core.contracts.jobs import JobView
from securetrain.core.errors import SecuretrainError


def _error(exc: SecuretrainError) -> TriggerEvent:
    return TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}",
                         "security_violation": exc.security_violation})  # fmt: skip


def progress_lines(job: JobView, reported_epochs: int) -> list[str]:
    """Log lines for the epochs of ``job`` after the first ``reported_epochs``."""
    lines = []
    for entry in job.history[reported_epochs:]:
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in entry.metrics.items())
        lines.append(f"job {job.job_id}: epoch {entry.epoch} done (step {entry.step}): {metrics}")
    return lines


class _SecuretrainTrigger(BaseTrigger):
    """A trigger whose ``__init__`` keeps each argument as the attribute of its name: it serializes as them."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        arguments = list(inspect.signature(type(self).__init__).parameters)[1:]
        return f"{type(self).__module__}.{type(self).__name__}", {name: getattr(self, name) for name in arguments}


class TrainingJobTrigger(_SecuretrainTrigger):
    """Waits for the agent's job ``job_id`` to finish, logging each epoch's metrics as it completes."""

    def __init__(self, cvm_conn_id: str, job_id: str, poll_interval: float = 5.0, reported_epochs: int = 0) -> None:
        super().__init__()
        self.cvm_conn_id = cvm_conn_id
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.reported_epochs = reported_epochs

    def _job(self) -> JobView:
        with ConfidentialVmHook(self.cvm_conn_id).get_conn() as client:
            return client.job(self.job_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        reported, state = self.reported_epochs, None
        while True:
            try:
                job = await asyncio.to_thread(self._job)
            except SecuretrainError as exc:
                yield _error(exc)
                return
            for line in progress_lines(job, reported):
                self.log.info("%s", line)
            reported = len(job.history)
            if job.state != state:
                state = job.state
                self.log.info("job %s: %s", self.job_id, state)
            if job.state.finished:
                # Trigger events are stored as JSON; the operator reads the job back as a JobView.
                yield TriggerEvent({"status": "done", "job": job.model_dump(mode="json")})
                return
            await asyncio.sleep(self.poll_interval)


class AttestationStatusTrigger(_SecuretrainTrigger):
    """Challenges the TEE until it attests (the agent may still be starting); fails at once on a bad token. The
    claims are held to :func:`~securetrain.airflow.enclave.challenge_policy` (the contract's, in a run under one)."""

    def __init__(self, cvm_conn_id: str, attestation_conn_id: str, keyvault_conn_id: str, kek_id: str,
                 poll_interval: float = 10.0, contract: str | None = None,
                 storage_conn_id: str = SecureStorageHook.default_conn_name) -> None:  # fmt: skip
        super().__init__()
        self.cvm_conn_id = cvm_conn_id
        self.attestation_conn_id = attestation_conn_id
        self.keyvault_conn_id = keyvault_conn_id
        self.kek_id = kek_id
        self.poll_interval = poll_interval
        self.contract = contract
        self.storage_conn_id = storage_conn_id

    def _attest(self) -> dict[str, Any]:
        policy = challenge_policy(self.kek_id, self.contract, keyvault_conn_id=self.keyvault_conn_id,
                                  storage_conn_id=self.storage_conn_id)  # fmt: skip
        return attest_now(ConfidentialVmHook(self.cvm_conn_id), AttestationHook(self.attestation_conn_id), policy)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                claims = await asyncio.to_thread(self._attest)
            except SecuretrainError as exc:
                if exc.security_violation:
                    yield _error(exc)
                    return
                self.log.info("the TEE cannot attest yet (%s); asking again in %.0f s", exc, self.poll_interval)
                await asyncio.sleep(self.poll_interval)
                continue
            yield TriggerEvent({"status": "done", "claims": claims})
            return


class EnclaveHealthTrigger(_SecuretrainTrigger):
    """Watches the enclave while the job ``job_id`` trains; fires when it finishes or on a security event."""

    def __init__(self, cvm_conn_id: str, job_id: str, expected_tee: str | None, max_attestation_age_s: float,
                 poll_interval: float = 10.0) -> None:  # fmt: skip
        super().__init__()
        self.cvm_conn_id = cvm_conn_id
        self.job_id = job_id
        self.expected_tee = expected_tee
        self.max_attestation_age_s = max_attestation_age_s
        self.poll_interval = poll_interval

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = ConfidentialVmHook(self.cvm_conn_id)
        while True:
            try:
                watch = await asyncio.to_thread(
                    watch_job, hook, self.job_id, expected_tee=self.expected_tee,
                    max_attestation_age_s=self.max_attestation_age_s,
                )  # fmt: skip
            except SecuretrainError as exc:
                yield _error(exc)
                return
            if watch.security_event is not None:
                yield TriggerEvent({"status": "security_event", "message": watch.security_event})
                return
            if watch.done:
                yield TriggerEvent({"status": "done", "job_state": None if watch.job_state is None else watch.job_state.value})
                return
            await asyncio.sleep(self.poll_interval)
