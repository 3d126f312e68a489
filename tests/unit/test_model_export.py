"""Export approvals and export requests, offline: what the data owner signs, what the TEE accepts before it
spends anything. The full path (the agent, the vault, storage) is in tests/security/test_export_needs_approval.py."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.model_export import ExportApproval, ExportApprovalInvalid, ExportNotApproved, approve_export
from securetrain.core.model_provenance import recipient_key
from securetrain.core.signed_documents import SignatureInvalid
from securetrain.tee.agent.exports import MAX_EXPORT_REQUEST_BYTES, ExportRequest, ExportRequestInvalid
from securetrain.tee.data_owners import DataOwnerKeys

KEK = "https://vault.test/keys/kek/0123456789abcdef0123456789abcdef"
NOW = datetime.datetime(2026, 5, 1, 12, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def owner() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def recipient_pem(other_rsa_key) -> str:
    return other_rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip


@pytest.fixture(scope="module")
def approval(owner, recipient_pem) -> dict[str, Any]:
    thumbprint = recipient_key(recipient_pem.encode()).thumbprint
    return approve_export(owner, kek_id=KEK, recipient_thumbprint=thumbprint, expires_at=NOW + datetime.timedelta(hours=1))


def request(recipient_pem: str, approval: dict[str, Any], changes: dict[str, Any] | None = None) -> bytes:
    body = {
        "kek_id": KEK, "run_id": "manual__1", "container": "model-registry", "blob": "m/sealed/x.sealed",
        "sealed_sha256": "ab" * 32, "recipient_public_key": recipient_pem, "nonce": "n" * 32, "approval": approval,
        **(changes or {}),
    }  # fmt: skip
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()  # None: the field left out


def test_an_approval_covers_its_recipient_and_kek_until_it_expires(owner, approval, recipient_pem) -> None:
    parsed = ExportApproval.parse(approval)
    thumbprint = recipient_key(recipient_pem.encode()).thumbprint
    parsed.authorize(kek_id=KEK, recipient_thumbprint=thumbprint, at=NOW)
    assert DataOwnerKeys([owner.public_key()]).verify(approval, what="the approval")
    with pytest.raises(ExportNotApproved, match="not 00000000"):
        parsed.authorize(kek_id=KEK, recipient_thumbprint="0" * 64, at=NOW)
    with pytest.raises(ExportNotApproved, match="covers models under KEK"):
        parsed.authorize(kek_id=KEK.replace("/kek/", "/other/"), recipient_thumbprint=thumbprint, at=NOW)
    with pytest.raises(ExportNotApproved, match="expired"):
        parsed.authorize(kek_id=KEK, recipient_thumbprint=thumbprint, at=NOW + datetime.timedelta(hours=1))


def test_an_approval_signed_by_another_key_or_changed_is_refused(approval) -> None:
    with pytest.raises(SignatureInvalid, match="not signed by a data owner this TEE trusts"):
        DataOwnerKeys([Ed25519PrivateKey.generate().public_key()]).verify(approval, what="the approval")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kek_id": "https://vault.test/keys/kek"}, "kek_id"),  # no version
        ({"kek_id": "not a url"}, "kek_id"),
        ({"sealed_sha256": "AB" * 32}, "sealed_sha256"),
        ({"nonce": "short"}, "nonce"),
        ({"blob": "../escape"}, "blob"),
        ({"recipient_public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"}, "recipient_public_key"),
        ({"approval": None}, "approval"),
        ({"approval": {"schema": "x"}}, "approval"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_export_request_names_its_field(recipient_pem, approval, changes, field) -> None:
    with pytest.raises(ExportRequestInvalid) as caught:
        ExportRequest.from_body(request(recipient_pem, approval, changes), max_bytes=MAX_EXPORT_REQUEST_BYTES)
    assert caught.value.field == field


def test_a_well_formed_request_parses_and_nested_json_is_a_clear_error(recipient_pem, approval) -> None:
    parsed = ExportRequest.from_body(request(recipient_pem, approval), max_bytes=MAX_EXPORT_REQUEST_BYTES)
    assert parsed.approval.kek_id == KEK and parsed.recipient.thumbprint == parsed.approval.recipient_thumbprint
    with pytest.raises(ExportRequestInvalid, match="deeper than 32 levels"):
        ExportRequest.from_body(b"[" * 100_000 + b"]" * 100_000, max_bytes=MAX_EXPORT_REQUEST_BYTES)
    with pytest.raises(ExportApprovalInvalid, match="expires_at"):
        ExportApproval.parse({**approval, "expires_at": "tomorrow"})
