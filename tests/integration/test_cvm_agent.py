"""The trainer agent started by the stack: mutual TLS, roles, the job API, attestation of a real job."""

from __future__ import annotations

import re
import secrets
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from securetrain.core.attestation.maa import AttestationServiceClient
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator
from securetrain.core.contracts.job_spec import DatasetRef, JobSpec
from securetrain.core.contracts.jobs import JobState, JobView
from securetrain.core.cvm_client import (
    CvmAccessDenied,
    CvmClient,
    CvmConflict,
    CvmJobNotFound,
    CvmRequestRejected,
    CvmTlsError,
    CvmUnreachable,
)
from securetrain.core.onboarding import SealedShard, new_manifest
from securetrain.localstack.pki import LocalCA
from securetrain.localstack import StackLayout, data_owner
from securetrain.core.storage import BlobStore
from tests.agent_process import AgentProcess
from tests.attestation_service import attestation_service
from securetrain.tee.agent.jobs import JobRecord, JobStore
from securetrain.tee.attest import AttestationSession, AttestationState, Attester, ReattestationFailed, TeeKey
from securetrain.localstack.platform.simulated_evidence import SimulatedSnpProvider

pytestmark = pytest.mark.integration

RELEASE_ERRORS = {"KeyReleaseUnavailable", "KeyReleaseDenied", "KeyVaultUnreachable"}


KEK_ID = "https://127.0.0.1:9/keys/kek/0123456789abcdef"
VERSION = f"v-{uuid.uuid4().hex[:8]}"
DATASET = DatasetRef(container="datasets", manifest=f"breast-cancer/{VERSION}/manifest.json")


def job_spec(run_id: str | None = None, **changes: Any) -> dict[str, Any]:
    return {
        "run_id": run_id or f"manual__{uuid.uuid4().hex}",
        "nonce": secrets.token_urlsafe(24),
        "kek_id": KEK_ID,
        "datasets": [DATASET.model_dump()],
        "columns": {"label": "target"},
        "model": {"name": "mlp", "params": {}},
        "hyperparameters": {"epochs": 1, "batch_size": 32, "learning_rate": 0.01, "seed": 1},
        "checkpoints": {"container": "checkpoints", "prefix": "run/"},
        "output": {"container": "models", "blob": "run/model.sealed"},
        **changes,
    }  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def dataset(local_stack) -> None:
    """A dataset manifest the stack's data owner signed for the jobs' KEK: the TEE accepts it, attests, and
    then asks the vault at ``KEK_ID`` (nothing listens there) for the key."""
    shard = SealedShard("datasets", "bc/part-0.sealed", "parquet", {"dataset_id": "breast-cancer", "kind": "dataset",
                        "format": "parquet"}, KEK_ID, "0" * 64, 1, 1)  # fmt: skip
    owner_key = data_owner.signing_key(StackLayout(local_stack.state_dir))
    with BlobStore.from_settings(local_stack.settings()) as store:
        store.ensure_container(DATASET.container)
        assert new_manifest("breast-cancer", VERSION, KEK_ID, [shard], owner_key).write(store, DATASET.container) == DATASET


@pytest.fixture(scope="module")
def pipeline(local_stack) -> CvmClient:
    return local_stack.settings().agent()


@pytest.fixture(scope="module")
def monitor(local_stack) -> CvmClient:
    return local_stack.agent_client("monitor")


def wait_finished(client: CvmClient, job_id: str, timeout_s: float = 120) -> JobView:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job.state.finished:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s: {client.job(job_id)}")


def handshake_refused(endpoint: str, ca: Path, cert: tuple[str, str] | None) -> bool:
    """Whether the agent refuses a TLS connection with ``cert`` (None: no certificate) before any HTTP."""
    url = urlsplit(endpoint)
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    try:
        with socket.create_connection((url.hostname, url.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=url.hostname) as tls:
                # TLS 1.3 sends the server's verdict on our certificate after the handshake: read it.
                tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: agent\r\n\r\n")
                return tls.recv(1024) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def test_stack_env_names_the_agent_and_its_workload(local_stack) -> None:
    env = local_stack.env
    assert env["SECURETRAIN_CVM_ENDPOINT"].startswith("https://127.0.0.1:")
    assert len(bytes.fromhex(env["SECURETRAIN_CVM_HOST_DATA"])) == 32
    for identity in ("PIPELINE", "MONITOR"):
        assert Path(env[f"SECURETRAIN_CVM_{identity}_CERT"]).is_file()
        assert Path(env[f"SECURETRAIN_CVM_{identity}_KEY"]).stat().st_mode & 0o077 == 0


def test_a_client_without_a_certificate_is_refused_at_the_handshake(local_stack) -> None:
    assert handshake_refused(local_stack.env["SECURETRAIN_CVM_ENDPOINT"], local_stack.ca_bundle, None)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(
            f"{local_stack.env['SECURETRAIN_CVM_ENDPOINT']}/v1/health", verify=local_stack.ca_bundle, timeout=5
        )


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(local_stack, tmp_path: Path) -> None:
    foreign = LocalCA.load_or_create(tmp_path / "foreign-ca").issue_client_certificate(tmp_path, "pipeline")
    cert = (str(foreign.cert_path), str(foreign.key_path))
    assert handshake_refused(local_stack.env["SECURETRAIN_CVM_ENDPOINT"], local_stack.ca_bundle, cert)
    client = CvmClient(local_stack.env["SECURETRAIN_CVM_ENDPOINT"], cert=foreign.cert_path,
                       key=foreign.key_path, ca_bundle=local_stack.ca_bundle)  # fmt: skip
    # TLS 1.3 delivers the refusal after the handshake, so the client sees the connection closed.
    with pytest.raises((CvmTlsError, CvmUnreachable), match="refused this client certificate|TLS"):
        client.health()


def test_a_server_certificate_is_no_client_certificate(local_stack) -> None:
    """The stack CA's server certificates carry serverAuth only; the agent refuses them as client identities."""
    server = local_stack.state_dir / "certs" / "server"
    cert = (str(server / "attestation.pem"), str(server / "attestation.key"))
    assert handshake_refused(local_stack.env["SECURETRAIN_CVM_ENDPOINT"], local_stack.ca_bundle, cert)


def test_an_identity_without_a_role_gets_403(local_stack, tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(local_stack.state_dir / "ca")
    stranger = ca.issue_client_certificate(tmp_path, "stranger")
    client = CvmClient(local_stack.env["SECURETRAIN_CVM_ENDPOINT"], cert=stranger.cert_path,
                       key=stranger.key_path, ca_bundle=local_stack.ca_bundle)  # fmt: skip
    with pytest.raises(CvmAccessDenied, match="'stranger' has no role"):
        client.health()


def test_the_monitor_reads_but_may_not_submit_or_cancel(monitor) -> None:
    health = monitor.health()
    assert health.tee_type == "sev-snp-simulated"
    assert {"cpu", "memory", "gpu", "attestation", "device"} <= health.model_dump().keys()
    assert 'securetrain_agent_info{tee_type="sev-snp-simulated"} 1' in monitor.metrics()
    with pytest.raises(CvmAccessDenied, match="monitor identity may only read"):
        monitor.submit(job_spec())
    with pytest.raises(CvmAccessDenied):
        monitor.cancel("0" * 32)


def test_a_malformed_spec_is_answered_400_naming_the_field(pipeline) -> None:
    with pytest.raises(CvmRequestRejected) as rejected:
        pipeline.submit(job_spec(surprise=True))
    assert rejected.value.field == "surprise" and rejected.value.status == 400
    with pytest.raises(CvmRequestRejected) as rejected:
        pipeline.submit(job_spec(hyperparameters={"epochs": 0, "batch_size": 1, "learning_rate": 0.1, "seed": 1}))
    assert rejected.value.field == "hyperparameters.epochs"


def test_unknown_job(pipeline) -> None:
    with pytest.raises(CvmJobNotFound):
        pipeline.job("f" * 32)


def test_a_job_attests_the_trainer_and_the_token_names_its_workload(pipeline, monitor, local_stack) -> None:
    spec = job_spec()
    job = pipeline.submit(spec)
    assert job.run_id == spec["run_id"] and job.state in ("queued", "attesting", "releasing", "failed")
    assert "nonce" not in job.model_dump()
    finished = wait_finished(pipeline, job.job_id)
    # Attestation succeeded; the key release is what stops this job (no vault behind its KEK id).
    assert finished.state == "failed"
    assert finished.error.code in RELEASE_ERRORS, finished.error
    attestation = monitor.attestation()
    claims = attestation.claims
    assert claims["nonce"] == spec["nonce"]
    assert claims["x-ms-sevsnpvm-hostdata"] == local_stack.env["SECURETRAIN_CVM_HOST_DATA"]
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == local_stack.env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"]
    assert claims["x-ms-runtime"]["keys"][0]["kty"] == "RSA"
    assert monitor.health().attestation.age_seconds >= 0
    counters = dict(line.rsplit(" ", 1) for line in monitor.metrics().splitlines() if not line.startswith("#"))
    assert float(counters["securetrain_agent_attestations_total"]) >= 1


def test_the_agents_log_holds_its_jobs_records_and_not_the_libraries_bookkeeping(pipeline, local_stack) -> None:
    """The Azure SDK logs each request and response with its headers at INFO, Great Expectations its registries as it
    imports: two lines in three of the agent's log were theirs. Read across every job the stack's agent ran so far."""
    finished = wait_finished(pipeline, pipeline.submit(job_spec()).job_id)
    agent_log = local_stack.layout.log_file("cvm").read_text()
    assert f"job {finished.job_id}: attesting" in agent_log
    assert re.findall(r" INFO (?:azure|great_expectations)\.\S+: .*", agent_log)[:3] == []


def test_the_stack_starts_its_agent_with_the_tee_s_allocator_setting(local_stack) -> None:
    """The agent warns at start when an allocator variable is missing (securetrain/tee/allocator.py)."""
    agent_log = local_stack.layout.log_file("cvm").read_text()
    assert "listening on https://" in agent_log
    assert "MALLOC_" not in agent_log


def test_resubmitting_a_run_id_returns_the_same_job(pipeline) -> None:
    spec = job_spec()
    first = pipeline.submit(spec)
    again = pipeline.submit(spec)
    assert again.job_id == first.job_id and again.created_at == first.created_at
    with pytest.raises(CvmConflict, match="another spec .*nonce"):
        pipeline.submit(spec | {"nonce": secrets.token_urlsafe(24)})
    wait_finished(pipeline, first.job_id)


def test_cancel_a_waiting_job_and_refuse_to_cancel_a_finished_one(pipeline) -> None:
    ahead = [pipeline.submit(job_spec()) for _ in range(2)]
    waiting = pipeline.submit(job_spec())
    cancelled = pipeline.cancel(waiting.job_id)
    assert cancelled.cancel_requested
    assert wait_finished(pipeline, waiting.job_id).state == "cancelled"
    finished = wait_finished(pipeline, ahead[0].job_id)
    with pytest.raises(CvmConflict, match="already failed"):
        pipeline.cancel(finished.job_id)
    wait_finished(pipeline, ahead[1].job_id)


@pytest.fixture
def restarted_agent(local_stack, tmp_path: Path):
    """A second agent process over a work dir that holds a job interrupted mid-training (as after a crash)."""
    spec = JobSpec.from_json(job_spec())
    interrupted = JobRecord(
        job_id=spec.job_id, run_id=spec.run_id, spec=spec, state=JobState.TRAINING, epoch=2, step=40,
        last_checkpoint="run/epoch-0002.sealed", attestation_sequence=1, created_at=time.time(), updated_at=time.time(),
    )  # fmt: skip
    agent = AgentProcess(local_stack, tmp_path)
    JobStore(agent.work_dir / "jobs").save(interrupted)
    try:
        yield agent.start(), spec
    finally:
        agent.stop()


def test_a_restarted_agent_resumes_unfinished_jobs_with_a_fresh_nonce(restarted_agent) -> None:
    client, spec = restarted_agent
    finished = wait_finished(client, spec.job_id)
    # It attested again (the record's second nonce: the first was spent before the crash) and asked for the key.
    assert finished.error.code in RELEASE_ERRORS, finished.error
    assert finished.epoch == 2 and finished.last_checkpoint == "run/epoch-0002.sealed"
    assert client.attestation().claims["nonce"] == f"{spec.nonce}.1"


@pytest.mark.slow
def test_reattestation_renews_the_token_and_reports_when_it_fails(local_stack, tmp_path: Path) -> None:
    """Against an attestation service whose tokens live 4 s: renewed with the next nonce, then refused."""
    env = local_stack.env
    ca = str(local_stack.ca_bundle)
    states: list[AttestationState] = []
    failures: list[ReattestationFailed] = []
    failed = threading.Event()
    session = None
    try:
        with attestation_service(local_stack, tmp_path, "--token-lifetime", "4") as endpoint:
            attester = Attester(
                SimulatedSnpProvider(Path(env["SECURETRAIN_SNP_PLATFORM_DIR"]), data_owner.key_ids(StackLayout(local_stack.state_dir))),
                AttestationServiceClient(endpoint, verify=ca),
                TokenValidator(AuthorityKeys(endpoint, verify=ca)),
            )
            nonce = secrets.token_urlsafe(24)
            session = AttestationSession(
                attester, TeeKey(), nonce, next_sequence=0, on_attested=states.append,
                on_failure=lambda failure: (failures.append(failure), failed.set()),
            )  # fmt: skip
            session.attest()
            session.start_renewal()
            deadline = time.monotonic() + 20
            while len(states) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [state.token.claims["nonce"] for state in states[:2]] == [nonce, f"{nonce}.1"]
        # The service is gone: the next renewal fails, and says so.
        assert failed.wait(30), "a failed renewal was not reported"
        assert "re-attestation failed" in str(failures[0])
    finally:
        if session is not None:
            session.stop()
