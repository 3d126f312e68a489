"""Whole jobs through a running agent: submit over mTLS, attest, release from the stack's vault, train, seal.

The stack's own agent runs the plain job; the fault tests start agents of their own (tests/agent_process.py)
so they can kill one mid-epoch or run a trainer whose code was changed.
"""

from __future__ import annotations

import io
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from securetrain.core.audit.tee_log import audit_events as tee_audit_events
from securetrain.core.audit.tee_log import collect_tee_logs, verify_tee_log
from securetrain.core.contracts.job_spec import DatasetRef
from securetrain.core.contracts.jobs import JobView
from securetrain.core.cvm_client import CvmClient
from securetrain.core.model_provenance import published_keys, verify_attestation_token
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.sealed import KekPrivateKey, SealedReader, inspect
from securetrain.core.storage import BlobStore
from tests.agent_process import AgentProcess, source_copy
from tests.jobs import released_kek

pytestmark = pytest.mark.integration

SUITE = {"name": "breast-cancer", "expectations": [
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}},
]}  # fmt: skip


def job_spec(local_stack, dataset: DatasetRef, *, epochs: int = 3, batch_size: int = 32, **changes: Any) -> dict:
    run = f"test__{uuid.uuid4().hex}"
    return {
        "run_id": run,
        "nonce": secrets.token_urlsafe(24),
        "kek_id": local_stack.env["SECURETRAIN_KEK_ID"],
        "datasets": [dataset.model_dump()],
        "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "learning_rate": 0.01, "seed": 7},
        "expectation_suite": SUITE,
        "checkpoints": {"container": "checkpoints", "prefix": f"{run}/"},
        "output": {"container": "models", "blob": f"{run}/model.sealed"},
        **changes,
    }


def wait_for(client: CvmClient, job_id: str, done, timeout_s: float = 180) -> JobView:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if done(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not there in {timeout_s} s: {client.job(job_id)}")


def finished(job: JobView) -> bool:
    return job.state.finished


def model_weights(store: BlobStore, kek: KekPrivateKey, output: dict[str, str]) -> dict[str, torch.Tensor]:
    with store.open_read(output["container"], output["blob"]) as blob:
        plaintext = b"".join(SealedReader(blob, kek, expected_context={"kind": "model"}).segments())
    return safetensors.torch.load(plaintext)


@pytest.fixture
def pipeline(local_stack):
    """The stack's own agent, as the pipeline identity."""
    with local_stack.settings().agent() as client:
        yield client


def test_a_job_submitted_over_mtls_trains_on_sealed_data_and_seals_its_outputs(
    local_stack, store, dataset_ref, pipeline
) -> None:
    spec = job_spec(local_stack, dataset_ref)
    job = wait_for(pipeline, pipeline.submit(spec).job_id, finished)

    assert job.state == "succeeded", job.error
    assert job.epoch == 3 and job.metrics["val_accuracy"] > 0.8
    assert job.validation["success"] is True and job.validation["statistics"]["evaluated_expectations"] == 2
    assert job.result.tee_type == "sev-snp-simulated" and job.result.device
    assert job.result.model.model_dump() == spec["output"]
    checkpoints = sorted(info.name for info in store.list_blobs("checkpoints", spec["checkpoints"]["prefix"]))
    assert len(checkpoints) == 3 and job.last_checkpoint == checkpoints[-1]
    kek_id = local_stack.env["SECURETRAIN_KEK_ID"]
    for container, name in [("models", spec["output"]["blob"])] + [("checkpoints", c) for c in checkpoints]:
        with store.open_read(container, name) as blob:
            header = inspect(io.BytesIO(blob.read()))
        assert header.key.kek_id == kek_id and header.content.context["run_id"] == spec["run_id"]
    weights = model_weights(store, released_kek(local_stack, kek_id), spec["output"])
    assert weights and all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_an_agent_on_production_settings_alone_completes_a_job(local_stack, dataset_ref, tmp_path: Path) -> None:
    """The agent as on Azure: TeeSettings from its environment, ManagedIdentityCredential through the host's
    IDENTITY_ENDPOINT and IDENTITY_HEADER, no account key, no client secret, no stack.env."""
    agent = AgentProcess(local_stack, tmp_path)
    environment = local_stack.tee_environment()
    assert not {"SECURETRAIN_BLOB_ACCOUNT_KEY", "AZURE_CLIENT_SECRET", "SECURETRAIN_STATE_DIR"} & environment.keys()
    assert environment["IDENTITY_ENDPOINT"].endswith("/msi/token")
    job = agent.run_job(job_spec(local_stack, dataset_ref, epochs=1))
    assert job.state == "succeeded", job.error
    assert job.key_release.kek_id == local_stack.env["SECURETRAIN_KEK_ID"]


def test_a_host_without_the_tees_identity_header_gets_no_token_and_no_key(local_stack, dataset_ref, tmp_path: Path) -> None:
    """A process on another host (or one that guessed) presents another header: the identity service refuses
    it the managed identity's token, so Key Vault is never asked."""
    agent = AgentProcess(local_stack, tmp_path, environment={"IDENTITY_HEADER": "not-this-hosts-secret"})
    job = agent.run_job(job_spec(local_stack, dataset_ref, epochs=1))
    assert job.state == "failed" and job.key_release is None and job.error.security_violation, job
    assert "identity obtained no token" in job.error.message, job.error


def test_an_agent_killed_mid_training_resumes_to_the_same_model(
    local_stack, store, dataset_ref, pipeline, tmp_path: Path
) -> None:
    agent = AgentProcess(local_stack, tmp_path)
    client = agent.start()
    try:
        # Small batches make epochs long enough to kill the agent between two of them.
        spec = job_spec(local_stack, dataset_ref, epochs=8, batch_size=4)
        job_id = client.submit(spec).job_id
        interrupted = wait_for(client, job_id, lambda job: job.epoch >= 2 or finished(job))
        agent.kill()
        assert interrupted.state == "training", interrupted
        client = agent.start()
        resumed = wait_for(client, job_id, finished)
        assert resumed.state == "succeeded", resumed.error
        assert resumed.epoch == 8
        assert f"resuming run {spec['run_id']} from checkpoints/" in agent.log()
        # The TEE's event log ran on across the crash: the restarted job's new key was attested into it and
        # signs everything before it too.
        policy = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
        keys_for = published_keys(local_stack.env["SECURETRAIN_CA_BUNDLE"])
        tee_log = collect_tee_logs(tee_audit_events(resumed.tee_log))[job_id]
        verdict = verify_tee_log(tee_log, lambda raw: verify_attestation_token(raw, policy, keys_for))
        assert verdict.kinds["attested"] >= 2 and verdict.kinds["model_sealed"] == 1
        # The same job again on the stack's agent, never interrupted, under another run id.
        uninterrupted = job_spec(local_stack, dataset_ref, epochs=8, batch_size=4)
        assert wait_for(pipeline, pipeline.submit(uninterrupted).job_id, finished).state == "succeeded"
    finally:
        agent.stop()
    kek = released_kek(local_stack, local_stack.env["SECURETRAIN_KEK_ID"])
    resumed_weights = model_weights(store, kek, spec["output"])
    plain_weights = model_weights(store, kek, uninterrupted["output"])
    assert resumed_weights.keys() == plain_weights.keys()
    for name, tensor in resumed_weights.items():
        assert torch.equal(tensor, plain_weights[name]), name


def test_a_trainer_whose_code_changed_is_refused_the_key(local_stack, dataset_ref, tmp_path: Path) -> None:
    code_root = tmp_path / "code"
    with (source_copy(code_root) / "tee" / "training" / "loop.py").open("a") as source:
        source.write("# one changed line\n")
    agent = AgentProcess(local_stack, tmp_path, code_root=code_root)
    job = agent.run_job(job_spec(local_stack, dataset_ref))
    assert job.state == "failed" and job.error.security_violation, job
    # The approved policy pins the trainer's HOST_DATA: the changed code's differs, and the error says so.
    assert "host" in job.error.message.lower(), job.error
    assert job.epoch == 0 and job.last_checkpoint is None


def test_a_failed_suite_fails_the_job_with_its_aggregates(local_stack, dataset_ref, pipeline) -> None:
    strict = {"name": "strict", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "mean_area", "max_value": 100}},
    ]}  # fmt: skip
    job = wait_for(pipeline, pipeline.submit(job_spec(local_stack, dataset_ref, expectation_suite=strict)).job_id, finished)
    assert job.state == "failed" and job.error.code == "DataValidationFailed"
    assert job.validation["success"] is False
    assert job.validation["statistics"]["unsuccessful_expectations"] == 1
    assert job.epoch == 0


def test_storage_unreachable_fails_the_job_after_bounded_retries(local_stack, dataset_ref, pipeline) -> None:
    missing = {**dataset_ref.model_dump(), "container": "no-such-container"}
    job = wait_for(pipeline, pipeline.submit(job_spec(local_stack, dataset_ref, datasets=[missing])).job_id, finished)
    assert job.state == "failed" and "no-such-container" in job.error.message, job.error
