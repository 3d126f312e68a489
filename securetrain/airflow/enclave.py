"""What the sensors check about the confidential VM, shared by their poke and their trigger.

:func:`attest_now` asks the TEE to attest for a fresh nonce and validates the token in Airflow itself
(signature against the service's published keys, issuer, lifetime, the nonce, and the KEK's release
policy: the claims must be ones Key Vault would release the key for). :func:`watch_job` looks at the
agent's health and the job of this run while it trains.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from securetrain.airflow.hooks.attestation import AttestationHook, claims_summary
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.keyvault import KeyVaultHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.core.attestation.azure_guest import token_nonce
from securetrain.core.attestation.tokens import TokenRejected
from securetrain.core.contracts.jobs import JobState
from securetrain.core.cvm_client import CvmJobNotFound
from securetrain.core.release_policy import ReleasePolicy


def challenge_policy(kek_id: str, contract: str | None, *, keyvault_conn_id: str, storage_conn_id: str) -> ReleasePolicy:
    """What the TEE's answer to Airflow's nonce must satisfy: the KEK's release policy as Key Vault stores it; in a
    run under ``contract`` (a digest), the contract's approved workloads
    (``contract_release_policy(contract, bound=False)``): the TEE enforces a contract only for a job, so its
    answer to a bare nonce cannot carry the contract claim each owner's KEK requires."""
    if not contract:
        return KeyVaultHook(keyvault_conn_id).release_policy(kek_id)
    from securetrain.airflow.governance import stored_contract  # noqa: PLC0415 - light DAG parsing
    from securetrain.core.governance.contract import contract_release_policy  # noqa: PLC0415

    with SecureStorageHook(storage_conn_id).blob_store() as store:
        return contract_release_policy(stored_contract(store, contract).contract, bound=False)


def attest_now(cvm: ConfidentialVmHook, attestation: AttestationHook, policy: ReleasePolicy) -> dict[str, Any]:
    """The TEE's claims now, validated; raises a :class:`SecurityViolation` subclass when they do not hold."""
    nonce = secrets.token_urlsafe(32)
    with cvm.get_conn() as client:
        answer = client.attest(nonce)
    token = attestation.validate(answer.token, policy=policy)
    if token.claims.get("nonce") != token_nonce(nonce, token.claims):
        raise TokenRejected("the TEE's token does not carry the nonce Airflow sent: it is not an answer to this challenge")
    return claims_summary(token.claims)


@dataclass(frozen=True)
class EnclaveWatch:
    """One look at the enclave while a job trains: done (the job finished cleanly), or a security event."""

    done: bool
    security_event: str | None
    job_state: JobState | None


def watch_job(cvm: ConfidentialVmHook, job_id: str, *, expected_tee: str | None, max_attestation_age_s: float) -> EnclaveWatch:
    """Health and the job ``job_id``: a wrong TEE, a stale or failed attestation are security events."""
    with cvm.get_conn() as client:
        health = client.health()
        try:
            job = client.job(job_id)
        except CvmJobNotFound:
            job = None
    if health.status != "ok":
        return EnclaveWatch(False, f"the agent reports status {health.status!r}", None)
    if expected_tee is not None and health.tee_type != expected_tee:
        return EnclaveWatch(False, f"the agent reports TEE {health.tee_type!r}, not {expected_tee!r}", None)
    if job is None:
        return EnclaveWatch(False, None, None)  # not submitted yet
    state, error = job.state, job.error
    if state is JobState.FAILED and error is not None and error.security_violation:
        return EnclaveWatch(False, f"the job failed a security check: {error.code}: {error.message}", state)
    if state.finished:
        return EnclaveWatch(True, None, state)
    attestation = health.attestation
    if state not in (JobState.QUEUED, JobState.ATTESTING) and attestation is None:
        return EnclaveWatch(False, f"the job is {state} but the agent holds no attestation", state)
    if attestation is not None and attestation.age_seconds > max_attestation_age_s:
        return EnclaveWatch(
            False, f"the TEE's attestation is {attestation.age_seconds:.0f} s old (at most {max_attestation_age_s:.0f})",
            state,
        )  # fmt: skip
    return EnclaveWatch(False, None, state)
