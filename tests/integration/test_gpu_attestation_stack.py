"""A TEE that requires its GPU, on a stack with the simulated H100 (``stack up --gpu simulated``).

The stack's CVM attests the simulated H100 beside its CPU for every attestation: the GPU's report answers the
nonce derived from the runtime data the CPU evidence binds, the attestation stand-in appraises it as NVIDIA's
NRAS would (trusting the simulated root, comparing the stated measurements), and the TEE checks the service's
tokens before it asks Key Vault for anything. A job attests both and trains, and its TEE log and the agent's health
carry the GPU claims. The attacks on that path (an untrusted GPU, replayed reports and answers, a token the TEE
cannot verify, an agent started without its GPU) are in tests/security/test_forged_gpu_evidence.py.

This module brings up a stack of its own (tests/gpu_stack.py's ``local_stack``), so the fixtures of
tests/conftest.py that build on ``local_stack`` (``store``, ``shard``, ``dataset_ref``) seal and publish on it.
"""

from __future__ import annotations

import jwt
import pytest

from securetrain.core.audit.tee_log import audit_events as tee_audit_events
from securetrain.core.audit.tee_log import collect_tee_logs
from tests import gpu_stack
from tests.integration.test_agent_job import finished, job_spec, wait_for

pytestmark = pytest.mark.slow
local_stack = gpu_stack.local_stack


def test_a_job_attests_gpu_and_cpu_then_trains(local_stack, dataset_ref) -> None:
    client = local_stack.agent_client("pipeline")
    health = client.health()
    assert health.gpu_attestation is not None and health.gpu_attestation.gpu_type == "nvidia-h100-simulated"
    job = wait_for(client, client.submit(job_spec(local_stack, dataset_ref, epochs=1)).job_id, finished)
    assert job.state == "succeeded", job.error
    # The GPU claims the attestation relied on are in the TEE-signed event log ...
    tee_log = collect_tee_logs(tee_audit_events(job.tee_log))[job.job_id]
    attested = [entry.details for entry in tee_log.entries.values() if entry.kind == "attested"]
    gpu = attested[0]["gpu"]
    assert gpu["gpu_type"] == "nvidia-h100-simulated" and gpu["cc_mode"] == "simulated"
    assert jwt.get_unverified_header(gpu["token"])["alg"] == "ES384"  # as NRAS signs, not MAA's RS256
    [claims] = gpu["gpus"].values()
    assert claims["measres"] == "success" and claims["x-nvidia-gpu-attestation-report-signature-verified"] is True
    # ... and the agent's health says the GPU is verified.
    verified = client.health().gpu_attestation
    assert verified.verified and verified.measurements == "success" and verified.cc_mode == "simulated"
    assert len(verified.gpus) == 1 and "GH100" in verified.gpus[0]
