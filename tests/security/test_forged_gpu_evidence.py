"""Forged GPU evidence gets no key: played through a stack with the simulated H100 (``stack up --gpu simulated``).

The host and Airflow sit between the TEE, its GPU and the attestation service: they can start the TEE beside
another GPU, hand it a GPU report or a service answer made for another attestation, alter the service's token, or
start the agent without its GPU setting. Each stops the attestation naming the check (or, for the setting, the
measurement the approved policy does not permit), and the vault's access log shows no release.

The stack is tests/gpu_stack.py's (a module's own); a job that attests GPU and CPU and trains is
tests/integration/test_gpu_attestation_stack.py.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from securetrain.core.attestation.tokens import TokenValidator
from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.localstack.platform.simulated_evidence import SimulatedGpuProvider
from securetrain.localstack.stack_gpu import gpu_dir
from securetrain.tee.attest import TeeKey, runtime_data
from securetrain.tee.evidence.nvidia_gpu import GpuEvidence
from securetrain.tee.gpu_attestation import GpuAttestationClient, GpuAttestationRefused, GpuAttester
from securetrain.tee.tee_services import attester
from tests import gpu_stack
from tests.agent_process import AgentProcess
from tests.conftest import LocalStack
from tests.integration.test_agent_job import job_spec
from tests.jobs import in_the_tee

pytestmark = pytest.mark.slow
local_stack = gpu_stack.local_stack


def releases(local_stack: LocalStack) -> int:
    """How many keys the vault has released so far (its access log)."""
    lines = Path(local_stack.env["SECURETRAIN_KEYVAULT_ACCESS_LOG"]).read_text().splitlines()
    return sum(1 for line in lines if json.loads(line)["decision"] == "released")


def test_a_gpu_the_service_does_not_trust_stops_the_job_before_any_key(local_stack, dataset_ref, tmp_path: Path) -> None:
    """Another simulated H100, whose root the attestation service was never told to trust."""
    before = releases(local_stack)
    agent = AgentProcess(local_stack, tmp_path, environment={"SECURETRAIN_GPU_DIR": str(tmp_path / "foreign-gpu")})
    job = agent.run_job(job_spec(local_stack, dataset_ref, epochs=1))
    assert job.state == "failed" and job.key_release is None and job.error.security_violation, job
    assert job.error.code == "GpuAttestationRefused" and "(service)" in job.error.message, job.error
    assert "root" in job.error.message.lower(), job.error
    assert releases(local_stack) == before


def test_an_agent_started_without_its_gpu_requirement_is_refused_the_key(local_stack, dataset_ref, tmp_path: Path) -> None:
    """The host drops SECURETRAIN_GPU: the TEE would skip its GPU, but it measures another workload (HOST_DATA),
    which the approved attestation policy does not permit."""
    before = releases(local_stack)
    agent = AgentProcess(local_stack, tmp_path, environment={"SECURETRAIN_GPU": "none"})
    job = agent.run_job(job_spec(local_stack, dataset_ref, epochs=1))
    assert job.state == "failed" and job.key_release is None and job.error.security_violation, job
    assert "host" in job.error.message.lower(), job.error
    assert releases(local_stack) == before


class ReplayedGpu:
    """A GPU provider that answers with a report the simulated H100 made for another attestation's runtime data."""

    gpu_type = "nvidia-h100-simulated"

    def __init__(self, gpu: SimulatedGpuProvider, replayed: bytes) -> None:
        self._replayed = gpu.gpu_evidence(replayed)

    def gpu_evidence(self, runtime_data: bytes) -> GpuEvidence:
        return self._replayed


class ServiceAnswers(GpuAttestationClient):
    """The GPU attestation service as the TEE reaches it, with each answer passed through ``change`` on the way."""

    def __init__(self, endpoint: str, verify: str, change) -> None:  # noqa: ANN001 - a callable on the answer
        super().__init__(endpoint, verify=verify)
        self._change = change

    def attest(self, nonce: bytes, evidence: GpuEvidence) -> Any:
        return self._change(super().attest(nonce, evidence), nonce, evidence)


def attest_in_the_tee(local_stack, *, gpu=None, change=None) -> None:  # noqa: ANN001
    """One attestation on this process in the TEE's place, with ``gpu`` as its GPU and ``change`` on the service's answers."""
    with in_the_tee(local_stack) as (settings, evidence):
        provider = gpu or SimulatedGpuProvider(gpu_dir(local_stack.layout))
        tee = attester(settings, evidence, provider)
        if change is not None:
            requirement = settings.gpu_requirement()
            client = ServiceAnswers(requirement.attestation_endpoint, str(settings.ca_bundle), change)
            validator = TokenValidator(requirement.token_keys(str(settings.ca_bundle)))
            tee.gpu = GpuAttester(provider, client, validator, requirement)
        tee.attest_tee(TeeKey(), secrets.token_urlsafe(24))


def test_a_gpu_report_made_for_another_attestation_is_refused(local_stack) -> None:
    before = releases(local_stack)
    other = runtime_data(TeeKey(), secrets.token_urlsafe(24))
    replayed = ReplayedGpu(SimulatedGpuProvider(gpu_dir(local_stack.layout)), other)
    with pytest.raises(GpuAttestationRefused, match=r"\(service\).*nonce") as refused:
        attest_in_the_tee(local_stack, gpu=replayed)
    assert refused.value.check == "service"
    assert releases(local_stack) == before


def test_a_service_answer_for_another_attestation_is_refused(local_stack) -> None:
    """The service's genuine answer to another job's GPU evidence, handed to this attestation."""
    other_runtime = runtime_data(TeeKey(), secrets.token_urlsafe(24))
    with in_the_tee(local_stack) as (settings, _):
        service = GpuAttestationClient(settings.gpu_requirement().attestation_endpoint, verify=str(settings.ca_bundle))
        provider = SimulatedGpuProvider(gpu_dir(local_stack.layout))
        recorded = service.attest(gpu_nonce(other_runtime), provider.gpu_evidence(other_runtime))
    with pytest.raises(GpuAttestationRefused, match=r"\(nonce\)") as refused:
        attest_in_the_tee(local_stack, change=lambda answer, nonce, evidence: recorded)
    assert refused.value.check == "nonce"


def _altered_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    return ".".join((header, payload, signature[:5] + flipped + signature[6:]))


def test_a_service_token_the_tee_cannot_verify_is_refused(local_stack) -> None:
    """The overall token with one signature character changed: it no longer verifies under the pinned issuer's keys."""
    def alter(answer, nonce, evidence):  # noqa: ANN001, ANN202
        return [["JWT", _altered_signature(answer[0][1])], answer[1]]

    before = releases(local_stack)
    with pytest.raises(GpuAttestationRefused, match=r"\(token\).*signature") as refused:
        attest_in_the_tee(local_stack, change=alter)
    assert refused.value.check == "token"
    assert releases(local_stack) == before
