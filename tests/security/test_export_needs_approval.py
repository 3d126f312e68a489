"""A hostile orchestrator exports a model to a key of its choosing; the TEE refuses unless the data owner approved.

Finding 6 of the security review: ``POST /v1/exports`` re-sealed any model to any RSA key the caller named,
and the ``export`` audit event was written by the CLI, so a direct call left no trace. Finding 9, for exports:
a missing blob gave 500, a malformed ``kek_id`` 500 after the nonce was spent. Played here with the pipeline's
certificate against the stack's own agent, vault and storage: without an approval, with one Airflow made or
one signed by another key, for another recipient, another KEK, or expired, the export is refused, no
attestation is spent and no byte of the model leaves; an approved export is recorded by the TEE, signed with
its attested key, in the export audit log before the bytes are returned, and if it cannot be recorded it is
refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.audit.chain import AuditEntry
from securetrain.core.audit.checkpoints import key_fingerprint, load_or_create_signing_key
from securetrain.core.audit.events import EventSource
from securetrain.core.audit.store import AUDIT_CONTAINER
from securetrain.core.cli import main
from securetrain.core.cvm_client import CvmClient, CvmError
from securetrain.core.model_export import EXPORT_AUDIT_LOG, approve_export
from securetrain.core.model_provenance import recipient_key
from securetrain.core.model_registry import ModelVersion
from securetrain.core.sealed import KekPrivateKey, SealedReader
from securetrain.localstack import StackLayout, data_owner
from securetrain.core.storage import BlobNotFound, BlobStore
from tests.jobs import job_spec, register, run_job

pytestmark = pytest.mark.integration

EXPORT_LOG_BLOB = f"audit/{EXPORT_AUDIT_LOG}.jsonl"


@pytest.fixture(scope="module")
def pipeline(local_stack) -> CvmClient:
    """What Airflow holds: the agent's pipeline certificate."""
    with local_stack.settings().agent() as client:
        yield client


@pytest.fixture(scope="module")
def model(local_stack, store, pipeline, dataset_ref, shard) -> ModelVersion:
    """A model trained by the stack's agent and registered, in a registry container of this module's own."""
    spec = job_spec(local_stack, dataset_ref)
    job = run_job(pipeline, spec)
    assert job.state == "succeeded", job.error
    return register(local_stack, store, shard, spec, job)


@pytest.fixture(scope="module")
def recipient(tmp_path_factory) -> tuple[rsa.RSAPrivateKey, Path]:
    """The recipient the data owner approves: its private key and its public key as a PEM file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("recipient") / "recipient.pem"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, path


@pytest.fixture(scope="module")
def owner_key(local_stack) -> Ed25519PrivateKey:
    return data_owner.signing_key(StackLayout(local_stack.state_dir))


def approval(key: Ed25519PrivateKey, kek_id: str, pem: Path, hours: float = 1) -> dict[str, Any]:
    thumbprint = recipient_key(pem.read_bytes()).thumbprint
    return approve_export(key, kek_id=kek_id, recipient_thumbprint=thumbprint,
                          expires_at=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=hours))  # fmt: skip


def export(client: CvmClient, model: ModelVersion, pem: Path, approval: dict[str, Any], **changes: str) -> bytes:
    sealed = model.manifest["sealed_model"]
    request = {
        "kek_id": sealed["kek_id"], "run_id": model.manifest["lineage"]["run_id"], "container": model.container,
        "blob": sealed["blob"], "sealed_sha256": sealed["sha256"], "recipient_public_key_pem": pem.read_text(),
        "nonce": secrets.token_urlsafe(24), "approval": approval, **changes,
    }  # fmt: skip
    return client.export_model(**request)


def export_log(store: BlobStore) -> bytes:
    store.ensure_container(AUDIT_CONTAINER)
    try:
        return b"".join(store.download_chunks(AUDIT_CONTAINER, EXPORT_LOG_BLOB))
    except BlobNotFound:
        return b""


def attestations(client: CvmClient) -> int:
    """How many attestations the agent has made (its Prometheus counter)."""
    line = next(line for line in client.metrics().splitlines() if line.startswith("securetrain_agent_attestations_total"))
    return int(float(line.split()[-1]))


def presented(case: str, owner: Ed25519PrivateKey, kek_id: str, attacker: Path, recipient: Path) -> dict[str, Any]:
    """The approval an attacker asking for an export to its own key could present, in each case."""
    if case == "none":
        return {}
    if case == "made-by-airflow":
        return {**approval(owner, kek_id, attacker), "signatures": []}
    if case == "signed-by-another-key":
        return approval(Ed25519PrivateKey.generate(), kek_id, attacker)
    if case == "for-another-recipient":  # the owner's genuine approval, for someone else
        return approval(owner, kek_id, recipient)
    if case == "for-another-kek":
        return approval(owner, kek_id.rsplit("/", 1)[0] + "/" + "1" * 32, attacker)
    assert case == "expired"
    return approval(owner, kek_id, attacker, hours=-1 / 3600)


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("none", 400, "an export approval is a JSON object"),
        ("made-by-airflow", 403, "not signed by a data owner this TEE trusts"),
        ("signed-by-another-key", 403, "not signed by a data owner this TEE trusts"),
        ("for-another-recipient", 403, "the export approval is for recipient key"),
        ("for-another-kek", 403, "covers models under KEK"),
        ("expired", 403, "the export approval expired"),
    ],
)
def test_an_export_without_the_owners_approval_is_refused_before_anything_is_spent(
    local_stack, store, pipeline, model, recipient, owner_key, tmp_path, case, status, reason
) -> None:
    # The attacker's own key, the one it wants the model sealed to.
    attacker = tmp_path / "attacker.pem"
    attacker.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    kek_id = model.manifest["sealed_model"]["kek_id"]
    before_log, before_attestations = export_log(store), attestations(pipeline)
    with pytest.raises(CvmError) as refused:
        export(pipeline, model, attacker, presented(case, owner_key, kek_id, attacker, recipient[1]))
    assert refused.value.status == status and reason in str(refused.value), refused.value
    if status == 400:
        assert refused.value.field == "approval"  # type: ignore[attr-defined]
    # No attestation, no key release, no record: the TEE decided before spending anything.
    assert attestations(pipeline) == before_attestations
    assert export_log(store) == before_log


def test_a_missing_model_is_404_and_a_malformed_kek_id_400_with_nothing_spent(
    local_stack, store, pipeline, model, recipient, owner_key
) -> None:
    kek = model.manifest["sealed_model"]["kek_id"]
    good = approval(owner_key, kek, recipient[1])
    before = attestations(pipeline)
    with pytest.raises(CvmError) as missing:
        export(pipeline, model, recipient[1], good, blob="breast-cancer-mlp/sealed/no-such-model.sealed")
    assert missing.value.status == 404 and "does not exist" in str(missing.value)
    with pytest.raises(CvmError) as malformed:
        export(pipeline, model, recipient[1], good, kek_id=kek.rsplit("/", 1)[0])  # no version
    assert malformed.value.status == 400 and malformed.value.field == "kek_id"  # type: ignore[attr-defined]
    assert attestations(pipeline) == before


def test_an_approved_export_is_recorded_by_the_tee_before_the_bytes_leave(
    local_stack, store, model, recipient, tmp_path, capsys
) -> None:
    approved, out = tmp_path / "approval.json", tmp_path / "model.export.sealed"
    # The data owner's command, with the data owner's key and settings.
    owner = ["--settings", str(local_stack.settings_file("data-owner")), "models", "--container", model.container]
    assert main([*owner, "approve-export", "--recipient-public-key", str(recipient[1]), "--kek-id",
                 model.manifest["sealed_model"]["kek_id"], "--signing-key", str(data_owner.signing_key_path(local_stack.layout)),
                 "--out", str(approved)]) == 0  # fmt: skip
    pipeline = ["--settings", str(local_stack.settings_file()), "models", "--container", model.container]
    assert main([*pipeline, "export", model.name, str(model.version), "--recipient-public-key", str(recipient[1]),
                 "--approval", str(approved), "--out", str(out)]) == 0  # fmt: skip
    exported = out.read_bytes()
    with out.open("rb") as src:
        reader = SealedReader(src, KekPrivateKey(recipient[0]), expected_context={"kind": "model-export"}, verify_digest=True)
        plaintext = b"".join(bytes(segment) for segment in reader.segments())
    assert hashlib.sha256(plaintext).hexdigest() == model.manifest["sealed_model"]["plaintext_sha256"]

    # The TEE's record of it: an export entry in the export log, in a TEE log signed with the attested key.
    lines = export_log(store).splitlines()
    recorded = [AuditEntry.parse(line, i).event for i, line in enumerate(lines)]
    exports = [e.details["entry"]["details"] for e in recorded
               if e.source is EventSource.TEE and e.details.get("entry", {}).get("kind") == "model_exported"]  # fmt: skip
    mine = [e for e in exports if e["export_sha256"] == hashlib.sha256(exported).hexdigest()]
    assert len(mine) == 1 and mine[0]["recipient_thumbprint"] == recipient_key(recipient[1].read_bytes()).thumbprint
    assert mine[0]["approval"] == json.loads(approved.read_text())
    capsys.readouterr()
    audit_key = load_or_create_signing_key(local_stack.layout.audit_signing_key)
    assert main(["--settings", str(local_stack.settings_file()), "audit", "verify", "--log", EXPORT_AUDIT_LOG,
                 "--audit-key-fingerprint", key_fingerprint(audit_key.public_key()),
                 "--public-key", str(local_stack.public_key_file(audit_key))]) == 0  # fmt: skip
    assert "vouched for by the TEE's signatures alone" in capsys.readouterr().out


def test_an_export_the_tee_cannot_record_is_refused(local_stack, store, pipeline, model, recipient, owner_key) -> None:
    blob = store.container_client(AUDIT_CONTAINER).get_blob_client(EXPORT_LOG_BLOB)
    original = export_log(store)
    # Whoever holds the storage account key breaks the export log: the TEE will not chain onto it.
    if not original:
        blob.create_append_blob()
    blob.append_block(b"not an audit entry\n")
    try:
        with pytest.raises(CvmError) as refused:
            export(pipeline, model, recipient[1], approval(owner_key, model.manifest["sealed_model"]["kek_id"], recipient[1]))
        assert refused.value.status == 424 and "could not be recorded" in str(refused.value)
    finally:
        blob.delete_blob()
        blob.create_append_blob()
        for line in original.splitlines(keepends=True):
            blob.append_block(line)
