"""A real job's model through the registry: provenance verifies, tampering is caught, export re-seals in the TEE.

One job on the stack's own agent (as in test_agent_job.py) produces the model, its TEE-signed statement and
the attestation token; each test registers it in a registry container of its own, so tampering in one test
cannot reach another.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import BlobAuditStore
from securetrain.core.audit.tee_log import audit_events as tee_audit_events
from securetrain.core.cli import main
from securetrain.core.contracts.jobs import JobView
from securetrain.core.model_registry import ModelRegistry, ModelRejected, ModelVersion, manifest_blob
from securetrain.core.onboarding import SealedShard
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.sealed import KekPrivateKey, SealedReader, content_digest
from securetrain.core.signed_documents import signature_entry
from securetrain.core.storage import BlobStore
from securetrain.localstack import data_owner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def job(local_stack, dataset_ref) -> JobView:
    """A finished job of the stack's agent: two quick epochs."""
    run = f"test__{uuid.uuid4().hex}"
    spec = {
        "run_id": run, "nonce": secrets.token_urlsafe(24), "kek_id": local_stack.env["SECURETRAIN_KEK_ID"],
        "datasets": [dataset_ref.model_dump()], "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [8]}},
        "hyperparameters": {"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "seed": 7},
        "checkpoints": {"container": "checkpoints", "prefix": f"{run}/"},
        "output": {"container": "models", "blob": f"{run}/model.sealed"},
    }  # fmt: skip
    with local_stack.settings().agent() as client:
        job_id = client.submit(spec).job_id
        deadline = time.monotonic() + 180
        while not (current := client.job(job_id)).state.finished:
            assert time.monotonic() < deadline, current
            time.sleep(0.1)
    assert current.state == "succeeded", current.error
    # As the audit stage does: the TEE's own event log into the run's audit log, where `models verify` looks
    # for the TEE's events up to the head the statement names.
    with BlobAuditStore.from_settings(local_stack.settings(), run) as audit_store:
        with AuditLog(audit_store, load_or_create_signing_key(local_stack.layout.audit_signing_key)) as log:
            for event in tee_audit_events(current.tee_log):
                log.record(event)
    return current


def register(local_stack, store: BlobStore, shard: SealedShard, job: JobView) -> ModelVersion:
    """Register the job's model as the pipeline's model management stage does, in a fresh container."""
    policy = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    lineage = {
        "dataset": {"id": "breast-cancer", "shards": [
            {"blob": f"{shard.container}/{shard.blob}", "plaintext_sha256": shard.plaintext_sha256}]},
        "release_policy_sha256": policy.sha256, "metrics": job.metrics,
    }  # fmt: skip
    registry = ModelRegistry(store, f"reg-{uuid.uuid4().hex[:12]}")
    return registry.register(
        "breast-cancer-mlp", source_container=job.result.model.container,
        source_blob=job.result.model.blob, kek_id=local_stack.env["SECURETRAIN_KEK_ID"],
        run_id=job.run_id, lineage=lineage, provenance=job.result.provenance.model_dump(mode="json"),
        signing_key=load_or_create_signing_key(local_stack.layout.model_signing_key),
    )  # fmt: skip


def models_cli(local_stack, version: ModelVersion, *args: str) -> int:
    options = ["--public-key", str(local_stack.public_key_file(local_stack.layout.model_signing_key))] if args[0] == "verify" else []
    return main(["--settings", str(local_stack.settings_file()), "models", "--container", version.container, *args, *options])


def test_the_job_result_carries_a_statement_of_what_the_tee_read_and_wrote(job, shard, store) -> None:
    provenance = job.result.provenance.model_dump(mode="json")
    statement = provenance["statement"]
    sealed = b"".join(store.download_chunks("models", job.result.model.blob))
    assert statement["sealed_model_sha256"] == content_digest(sealed)
    assert statement["datasets"] == [
        {"blob": f"{shard.container}/{shard.blob}", "plaintext_sha256": shard.plaintext_sha256}
    ]
    assert statement["run_id"] == job.run_id and statement["metrics"] == job.metrics
    assert provenance["tee_signature"]["algorithm"] == "PS256" and provenance["attestation_token"].count(".") == 2


def test_a_fresh_version_verifies_and_lists(local_stack, store, shard, job, capsys) -> None:
    version = register(local_stack, store, shard, job)
    assert models_cli(local_stack, version, "verify", version.name, str(version.version)) == 0
    out = capsys.readouterr().out
    assert "provenance verified" in out and "attested TEE key" in out and "holds the TEE's events up to" in out
    assert models_cli(local_stack, version, "list", version.name) == 0
    assert job.run_id in capsys.readouterr().out


def _rewrite_manifest(store: BlobStore, version: ModelVersion, manifest: dict[str, Any]) -> None:
    body = json.dumps(manifest).encode()
    blob = manifest_blob(version.name, version.version)
    store.upload_stream(version.container, blob, io.BytesIO(body), length=len(body), overwrite=True)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("sealed", "the model was replaced or changed"),
        ("manifest", "signature on the model manifest does not verify"),
        ("signature", "signature on the model manifest does not verify"),
        ("statement", "TEE signature over the model statement does not verify"),
    ],
)
def test_tampering_fails_verification_naming_what(local_stack, store, shard, job, capsys, tamper, message) -> None:
    version = register(local_stack, store, shard, job)
    manifest = json.loads(json.dumps(version.manifest))
    if tamper == "sealed":
        sealed = bytearray(b"".join(store.download_chunks(version.container, version.model_blob)))
        sealed[-1] ^= 1
        store.upload_stream(version.container, version.model_blob, io.BytesIO(sealed), length=len(sealed),
                            overwrite=True)  # fmt: skip
    elif tamper == "manifest":
        manifest["lineage"]["metrics"]["val_accuracy"] = 0.999
        _rewrite_manifest(store, version, manifest)
    elif tamper == "signature":
        value = manifest["signatures"][0]["value"]
        manifest["signatures"][0]["value"] = ("0" if value[0] != "0" else "1") + value[1:]
        _rewrite_manifest(store, version, manifest)
    else:
        # Whoever holds the pipeline key could re-sign the manifest, but not the TEE's statement.
        manifest["provenance"]["statement"]["metrics"]["val_accuracy"] = 0.999
        key = load_or_create_signing_key(local_stack.layout.model_signing_key)
        manifest["signatures"] = [signature_entry(key, {k: v for k, v in manifest.items() if k != "signatures"})]
        _rewrite_manifest(store, version, manifest)
    assert models_cli(local_stack, version, "verify", version.name, str(version.version)) == 3
    assert message in capsys.readouterr().err


def test_registration_refuses_a_statement_about_another_model(local_stack, store, shard, job) -> None:
    forged = job.model_dump(mode="json")
    forged["result"]["provenance"]["statement"]["sealed_model_sha256"] = "0" * 64
    forged = JobView.model_validate(forged)
    with pytest.raises(ModelRejected, match="provenance does not verify"):
        register(local_stack, store, shard, forged)


def test_export_reseals_for_the_recipient_in_the_tee(local_stack, store, shard, job, tmp_path, capsys) -> None:
    version = register(local_stack, store, shard, job)
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "recipient.pem"
    pem.write_bytes(recipient.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    approval = tmp_path / "approval.json"
    kek = version.manifest["sealed_model"]["kek_id"]
    assert models_cli(local_stack, version, "approve-export", "--recipient-public-key", str(pem), "--kek-id", kek,
                      "--signing-key", str(data_owner.signing_key_path(local_stack.layout)), "--out", str(approval)) == 0  # fmt: skip
    out = tmp_path / "model.export.sealed"
    args = ("export", version.name, str(version.version), "--recipient-public-key", str(pem), "--out", str(out),
            "--approval", str(approval))  # fmt: skip
    assert models_cli(local_stack, version, *args) == 0
    with out.open("rb") as src:
        reader = SealedReader(src, KekPrivateKey(recipient), expected_context={"kind": "model-export"},
                              verify_digest=True)  # fmt: skip
        plaintext = b"".join(bytes(segment) for segment in reader.segments())
    assert hashlib.sha256(plaintext).hexdigest() == version.manifest["sealed_model"]["plaintext_sha256"]
    assert reader.header.content.context["source_sha256"] == version.manifest["sealed_model"]["sha256"]
    capsys.readouterr()

    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    bad_out = tmp_path / "never.sealed"
    args = ("export", version.name, str(version.version), "--recipient-public-key", str(bad), "--out", str(bad_out),
            "--approval", str(approval))  # fmt: skip
    assert models_cli(local_stack, version, *args) == 2
    assert "the recipient key is not a PEM public key" in capsys.readouterr().err
    assert not bad_out.exists()
