"""A hostile orchestrator names what the TEE should open; the TEE opens only what a data owner published.

Findings 7 and 8 of the security review, played through the stack's real agent, vault and storage with
the pipeline's certificate (all a stock Airflow holds): a registered model or a checkpoint named as a
dataset, a manifest Airflow wrote or changed itself, an owner-signed manifest listing a blob of another
kind, and a TEE running one changed byte of the core library. Each is refused, and no job that is refused
for its datasets spends an attestation or asks for a key.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core import signed_documents
from securetrain.core.cvm_client import CvmClient
from securetrain.core.contracts.job_spec import DatasetRef
from securetrain.core.contracts.jobs import JobView
from securetrain.core.onboarding import DatasetManifest, SealedShard, new_manifest
from securetrain.localstack import StackLayout, data_owner
from securetrain.core.storage import BlobStore
from tests.agent_process import AgentProcess, source_copy
from tests.jobs import job_spec, run_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(local_stack) -> CvmClient:
    return local_stack.settings().agent()


@pytest.fixture(scope="module")
def owner_key(local_stack) -> Ed25519PrivateKey:
    return data_owner.signing_key(StackLayout(local_stack.state_dir))


@pytest.fixture(scope="module")
def trained(local_stack, pipeline, dataset_ref) -> JobView:
    """A legitimate run: its sealed model and checkpoints are what the attacker wants opened as data."""
    job = run_job(pipeline, job_spec(local_stack, dataset_ref))
    assert job.state == "succeeded", job.error
    return job


def publish(store: BlobStore, manifest: DatasetManifest) -> DatasetRef:
    body = json.dumps(manifest.to_json()).encode()
    blob = DatasetManifest.blob_name(manifest.dataset_id, manifest.version)
    store.upload_stream("datasets", blob, io.BytesIO(body), length=len(body), overwrite=True)
    return DatasetRef(container="datasets", manifest=blob)


def as_shard(container: str, blob: str, context: dict[str, str], kek_id: str) -> SealedShard:
    return SealedShard(container, blob, "parquet", context, kek_id, "0" * 64, 1, 1)


def assert_refused_before_attesting(job: JobView, code: str, *fragments: str) -> None:
    assert job.state == "failed", job
    assert job.error.code == code, job.error
    for fragment in fragments:
        assert fragment in job.error.message, job.error
    # Nothing was spent: no attestation, no key release, no epoch.
    assert [t.state for t in job.transitions] == ["failed"], job.transitions
    assert job.key_release is None and job.epoch == 0


def test_a_sealed_model_named_as_a_manifest_is_not_a_dataset(local_stack, pipeline, trained) -> None:
    model = trained.output
    job = run_job(pipeline, job_spec(local_stack, DatasetRef(container=model.container, manifest=model.blob)))
    assert_refused_before_attesting(job, "ManifestInvalid", model.blob)


def test_a_manifest_airflow_wrote_itself_is_refused(local_stack, pipeline, store, trained) -> None:
    """Airflow seals nothing and signs nothing the TEE trusts: its own key is not the owner's."""
    kek_id = local_stack.env["SECURETRAIN_KEK_ID"]
    model = as_shard(trained.output.container, trained.output.blob, {"kind": "dataset"}, kek_id)
    forged = new_manifest("stolen", f"v-{uuid.uuid4().hex[:8]}", kek_id, [model], Ed25519PrivateKey.generate())
    job = run_job(pipeline, job_spec(local_stack, publish(store, forged)))
    assert_refused_before_attesting(job, "DatasetRefused", "not signed by a data owner this TEE trusts")


def test_an_owner_manifest_changed_after_signing_is_refused(local_stack, pipeline, store, dataset_ref, trained) -> None:
    """The owner's real signature over another list of blobs: adding the model to it breaks the signature."""
    genuine = DatasetManifest.read(store, dataset_ref.container, dataset_ref.manifest)
    model = as_shard(trained.output.container, trained.output.blob, {"kind": "dataset"}, genuine.kek_id)
    changed = DatasetManifest(genuine.dataset_id, f"v-{uuid.uuid4().hex[:8]}", genuine.kek_id, [*genuine.shards, model],
                              genuine.created_at, genuine.signatures)  # fmt: skip
    job = run_job(pipeline, job_spec(local_stack, publish(store, changed)))
    assert_refused_before_attesting(job, "DatasetRefused", "does not verify")


@pytest.mark.parametrize("kind", ["model", "checkpoint", "model-export"])
def test_an_owner_signed_manifest_listing_another_kind_is_refused(local_stack, pipeline, store, owner_key, trained, kind) -> None:
    """Even the owner cannot make the TEE read a model or checkpoint as training data by listing it."""
    kek_id = local_stack.env["SECURETRAIN_KEK_ID"]
    model = as_shard(trained.output.container, trained.output.blob, {"run_id": trained.run_id, "kind": kind}, kek_id)
    manifest = new_manifest("mislabelled", f"v-{uuid.uuid4().hex[:8]}", kek_id, [model], owner_key)
    job = run_job(pipeline, job_spec(local_stack, publish(store, manifest)))
    assert_refused_before_attesting(job, "DatasetRefused", f"kind {kind!r}")


def test_a_model_listed_as_kind_dataset_does_not_open(local_stack, pipeline, store, owner_key, trained) -> None:
    """A manifest entry may only claim the context the blob was sealed with: the header says kind model."""
    kek_id = local_stack.env["SECURETRAIN_KEK_ID"]
    model = as_shard(trained.output.container, trained.output.blob, {"kind": "dataset"}, kek_id)
    manifest = new_manifest("relabelled", f"v-{uuid.uuid4().hex[:8]}", kek_id, [model], owner_key)
    job = run_job(pipeline, job_spec(local_stack, publish(store, manifest)))
    assert job.state == "failed" and job.epoch == 0, job
    assert "context" in job.error.message, job.error
    assert job.validation is None and job.history == ()


def test_a_manifest_for_another_kek_is_refused(local_stack, pipeline, store, owner_key, shard) -> None:
    other_kek = local_stack.env["SECURETRAIN_KEK_ID"].replace("/keys/securetrain-kek/", "/keys/another-kek/")
    manifest = new_manifest("other", f"v-{uuid.uuid4().hex[:8]}", other_kek, [shard], owner_key)
    job = run_job(pipeline, job_spec(local_stack, publish(store, manifest)))
    assert_refused_before_attesting(job, "DatasetRefused", "not for the job's KEK")


def test_a_tee_running_one_changed_byte_of_the_core_library_gets_no_key(local_stack, dataset_ref, tmp_path: Path) -> None:
    """Finding 8: the measurement covers the core library the agent imports, not only securetrain/tee/."""
    code_root = tmp_path / "code"
    with (source_copy(code_root) / "core" / "sealed" / "stream.py").open("a") as source:
        source.write("# one changed line in the code that decrypts inside the TEE\n")
    agent = AgentProcess(local_stack, tmp_path, code_root=code_root)
    job = agent.run_job(job_spec(local_stack, dataset_ref))
    assert job.state == "failed" and job.error.security_violation, job
    assert "host" in job.error.message.lower(), job.error
    assert job.key_release is None and job.epoch == 0


def test_the_owner_keys_the_tee_trusts_are_part_of_its_measurement(local_stack) -> None:
    """Started with another owner's key, the TEE is another workload: the approved HOST_DATA is not its."""
    from securetrain.tee.workload import host_data  # noqa: PLC0415

    approved = local_stack.env["SECURETRAIN_CVM_HOST_DATA"]
    assert host_data(data_owner.key_ids(StackLayout(local_stack.state_dir))).hex() == approved
    impostor = signed_documents.key_id(Ed25519PrivateKey.generate().public_key())
    assert host_data([impostor]).hex() != approved
