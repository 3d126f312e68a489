"""Jobs through the stack's agent, for tests that need a finished run: its spec, waiting for it, registering it;
and the test process in the TEE's place, for tests that need what only a TEE gets (a released KEK)."""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.contracts.job_spec import DatasetRef
from securetrain.core.contracts.jobs import JobView
from securetrain.core.cvm_client import CvmClient
from securetrain.core.model_registry import ModelRegistry, ModelVersion
from securetrain.core.onboarding import SealedShard
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.sealed import KekPrivateKey
from securetrain.core.storage import BlobStore
from securetrain.localstack import data_owner
from securetrain.localstack.platform.simulated_evidence import SimulatedSnpProvider
from securetrain.tee.attest import TeeKey
from securetrain.tee.settings import TeeSettings
from securetrain.tee.tee_services import attester, key_releaser
from tests.conftest import process_environment


@contextlib.contextmanager
def in_the_tee(local_stack) -> Iterator[tuple[TeeSettings, SimulatedSnpProvider]]:
    """This process in the TEE's place: the TEE's settings and managed identity, the simulated chip's evidence."""
    with process_environment(local_stack.tee_environment()):
        settings = TeeSettings.load()
        evidence = SimulatedSnpProvider(Path(local_stack.env["SECURETRAIN_SNP_PLATFORM_DIR"]),
                                        data_owner.key_ids(local_stack.layout), settings.gpu_configuration())  # fmt: skip
        yield settings, evidence


def released_kek(local_stack, kek_id: str) -> KekPrivateKey:
    """The KEK as a TEE gets it: attest an ephemeral key on the simulated platform, then Secure Key Release."""
    with in_the_tee(local_stack) as (settings, evidence):
        tee_key = TeeKey()
        token = attester(settings, evidence).attest(tee_key, secrets.token_urlsafe(24))
        return key_releaser(settings).release(kek_id, token, tee_key).kek_private


def job_spec(local_stack, *datasets: DatasetRef) -> dict[str, Any]:
    """A one-epoch job on ``datasets`` under the stack's KEK, with a run id of its own."""
    run = f"attack__{uuid.uuid4().hex}"
    return {
        "run_id": run, "nonce": secrets.token_urlsafe(24), "kek_id": local_stack.env["SECURETRAIN_KEK_ID"],
        "datasets": [ref.model_dump() for ref in datasets], "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [8]}},
        "hyperparameters": {"epochs": 1, "batch_size": 64, "learning_rate": 0.01, "seed": 7},
        "checkpoints": {"container": "checkpoints", "prefix": f"{run}/"},
        "output": {"container": "models", "blob": f"{run}/model.sealed"},
    }  # fmt: skip


def run_job(client: CvmClient, spec: dict[str, Any], timeout_s: float = 180) -> JobView:
    """Submit ``spec`` and return the job once it ended."""
    job_id = client.submit(spec).job_id
    deadline = time.monotonic() + timeout_s
    while not (job := client.job(job_id)).state.finished:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def register(local_stack, store: BlobStore, shard: SealedShard, spec: dict[str, Any], job: JobView) -> ModelVersion:
    """Register a succeeded job's model as the model management stage does, in a registry container of its own."""
    policy = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    return ModelRegistry(store, f"reg-{uuid.uuid4().hex[:12]}").register(
        "breast-cancer-mlp", source_container=spec["output"]["container"], source_blob=spec["output"]["blob"],
        kek_id=spec["kek_id"], run_id=spec["run_id"], provenance=job.result.provenance.model_dump(mode="json"),
        lineage={"dataset": {"shards": [{"blob": f"{shard.container}/{shard.blob}", "plaintext_sha256": shard.plaintext_sha256}]},
                 "release_policy_sha256": policy.sha256},
        signing_key=load_or_create_signing_key(local_stack.layout.model_signing_key),
    )  # fmt: skip
