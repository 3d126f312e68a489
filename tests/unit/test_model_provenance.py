"""The provenance chain of a model, offline: a TEE-signed statement, a token that attests the TEE key, a signed
manifest. Every link verifies when untouched, and changing any field fails naming what broke."""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.model_provenance import (
    DatasetDigest,
    JwksKeys,
    ProvenanceInvalid,
    RecipientKeyInvalid,
    model_statement,
    recipient_key,
    sign_statement,
    verify_manifest_signature,
    verify_provenance,
    verify_statement_signature,
)
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.signed_documents import signature_entry
from securetrain.tee.attest import TeeKey

AUTHORITY = "https://attestation.test"
HOST_DATA = "ab" * 32
MEASUREMENT = "cd" * 48
SEALED = hashlib.sha256(b"sealed model").hexdigest()
PLAINTEXT = hashlib.sha256(b"model").hexdigest()
SHARD = hashlib.sha256(b"shard").hexdigest()
TEE_LOG_HEAD = {"log_id": "job-1", "seq": 4, "head_hash": hashlib.sha256(b"entry 4").hexdigest()}


@pytest.fixture(scope="module")
def authority() -> tuple[rsa.RSAPrivateKey, JwksKeys]:
    """An attestation authority's signing key and the JWKS (x5c certificate) it publishes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attestation.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return key, JwksKeys({"keys": [{"kid": "signer", "x5c": [x5c]}]}, "the test JWKS")


@pytest.fixture(scope="module")
def policy() -> ReleasePolicy:
    return ReleasePolicy.parse({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": HOST_DATA},
        {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": MEASUREMENT},
        {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
        {"claim": "x-ms-runtime.keys", "exists": True},
    ]}]})  # fmt: skip


@pytest.fixture(scope="module")
def tee_key() -> TeeKey:
    return TeeKey()


def token(authority_key: rsa.RSAPrivateKey, tee_key: TeeKey, **changes: Any) -> str:
    now = int(time.time()) - 3 * 3600  # historical: expired long ago, which verification must accept
    claims = {
        "iss": AUTHORITY, "iat": now, "nbf": now, "exp": now + 600,
        "x-ms-sevsnpvm-hostdata": HOST_DATA, "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT,
        "x-ms-sevsnpvm-is-debuggable": False, "x-ms-runtime": {"keys": [tee_key.public_jwk()], "nonce": "n" * 22},
        **changes,
    }  # fmt: skip
    return jwt.encode(claims, authority_key, algorithm="RS256", headers={"kid": "signer"})


def statement() -> dict[str, Any]:
    return model_statement(
        run_id="manual__1", sealed_model_sha256=SEALED, model_plaintext_sha256=PLAINTEXT,
        datasets=[DatasetDigest("datasets/a/shard-0.sealed", SHARD)],
        hyperparameters={"epochs": 3, "learning_rate": 0.01}, metrics={"val_accuracy": 0.93},
        tee_log_head=TEE_LOG_HEAD,
    )  # fmt: skip


@pytest.fixture
def pipeline_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def manifest(authority, policy, tee_key, pipeline_key) -> dict[str, Any]:
    body = statement()
    document: dict[str, Any] = {
        "schema": "securetrain.model-manifest/v3", "name": "demo", "version": 1, "tee_log_head": TEE_LOG_HEAD,
        "sealed_model": {"blob": f"demo/sealed/{SEALED}.sealed", "sha256": SEALED, "plaintext_sha256": PLAINTEXT},
        "lineage": {"run_id": "manual__1", "release_policy_sha256": policy.sha256,
                    "dataset": {"shards": [{"blob": "datasets/a/shard-0.sealed", "plaintext_sha256": SHARD}]}},
        "provenance": {"statement": body, "tee_signature": sign_statement(tee_key.private_key, body),
                       "attestation_token": token(authority[0], tee_key)},
    }  # fmt: skip
    document["signatures"] = [signature_entry(pipeline_key, document)]
    return document


def verify(manifest: dict[str, Any], authority, policy, pipeline_key, sealed: str = SEALED) -> list[str]:
    return verify_provenance(
        manifest, sealed, pipeline_key=pipeline_key.public_key(), release_policy=policy, keys_for=lambda _: authority[1]
    )


def test_an_untouched_chain_verifies(manifest, authority, policy, pipeline_key) -> None:
    checked = verify(manifest, authority, policy, pipeline_key)
    assert len(checked) == 5 and "attested TEE key" in checked[3]


def test_the_statement_signature_round_trips_and_fails_for_any_changed_field(tee_key: TeeKey) -> None:
    body = statement()
    signature = sign_statement(tee_key.private_key, body)
    public = tee_key.private_key.public_key()
    verify_statement_signature(public, body, signature)
    for field in body:
        changed = copy.deepcopy(body)
        changed[field] = "changed"
        with pytest.raises(ProvenanceInvalid, match="TEE signature over the model statement does not verify"):
            verify_statement_signature(public, changed, signature)
    with pytest.raises(ProvenanceInvalid, match="does not verify"):
        verify_statement_signature(TeeKey().private_key.public_key(), body, signature)


def _resign(pipeline_key: Ed25519PrivateKey) -> Callable[[dict[str, Any]], None]:
    def resign(manifest: dict[str, Any]) -> None:
        manifest["signatures"] = [signature_entry(pipeline_key, manifest)]

    return resign


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda m: m["lineage"].update(run_id="other"), "signature on the model manifest does not verify"),
        (lambda m: m["sealed_model"].update(size=1), "signature on the model manifest does not verify"),
        (lambda m: m["signatures"][0].update(value="00" * 64), "signature on the model manifest does not verify"),
        (lambda m: m.pop("signatures"), "the model manifest carries no signature"),
        (lambda m: m["signatures"][0].update(key_id="00" * 32), "not signed by the pipeline key"),
    ],
)
def test_a_changed_manifest_or_signature_fails_the_pipeline_signature(
    manifest, authority, policy, pipeline_key, tamper, message
) -> None:
    tamper(manifest)
    with pytest.raises(ProvenanceInvalid, match=message):
        verify(manifest, authority, policy, pipeline_key)


def test_a_replaced_sealed_model_fails_first(manifest, authority, policy, pipeline_key) -> None:
    with pytest.raises(ProvenanceInvalid, match="the model was replaced or changed"):
        verify(manifest, authority, policy, pipeline_key, sealed="0" * 64)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        # Even re-signed by the pipeline: the TEE signature does not cover the changed statement.
        (lambda m: m["provenance"]["statement"].update(sealed_model_sha256="1" * 64), "TEE signature"),
        (lambda m: m["provenance"]["statement"]["metrics"].update(val_accuracy=0.99), "TEE signature"),
        (lambda m: m["provenance"]["statement"]["datasets"][0].update(plaintext_sha256="2" * 64), "TEE signature"),
        # The statement is intact but the manifest claims other data or another model.
        (lambda m: m["lineage"]["dataset"]["shards"][0].update(plaintext_sha256="3" * 64), "dataset digests"),
        (lambda m: m["sealed_model"].update(plaintext_sha256="4" * 64), "model_plaintext_sha256"),
        (lambda m: m["lineage"].update(run_id="manual__2"), "run_id"),
        (lambda m: m["lineage"].update(release_policy_sha256="5" * 64), "names release policy"),
        (lambda m: m.update(tee_log_head={**TEE_LOG_HEAD, "seq": 2}), "TEE log head"),  # a rollback claimed
    ],
)
def test_a_statement_that_disagrees_with_the_manifest_fails_naming_it(
    manifest, authority, policy, pipeline_key, tamper, message
) -> None:
    tamper(manifest)
    _resign(pipeline_key)(manifest)
    with pytest.raises(ProvenanceInvalid, match=message):
        verify(manifest, authority, policy, pipeline_key)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"x-ms-sevsnpvm-hostdata": "ef" * 32}, "does not satisfy the release policy"),
        ({"x-ms-sevsnpvm-is-debuggable": True}, "does not satisfy the release policy"),
        ({"iss": "https://elsewhere.test"}, "not by an authority the release policy trusts"),
    ],
)
def test_a_token_for_another_tee_fails_the_policy(
    manifest, authority, policy, pipeline_key, tee_key, claims, message
) -> None:
    manifest["provenance"]["attestation_token"] = token(authority[0], tee_key, **claims)
    _resign(pipeline_key)(manifest)
    with pytest.raises(ProvenanceInvalid, match=message):
        verify(manifest, authority, policy, pipeline_key)


def test_a_token_not_signed_by_the_authority_fails(manifest, authority, policy, pipeline_key, tee_key) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    manifest["provenance"]["attestation_token"] = token(forger, tee_key)
    _resign(pipeline_key)(manifest)
    with pytest.raises(ProvenanceInvalid, match="signature does not verify with https://attestation.test"):
        verify(manifest, authority, policy, pipeline_key)


def test_a_statement_signed_by_another_key_than_the_attested_one_fails(
    manifest, authority, policy, pipeline_key
) -> None:
    body = manifest["provenance"]["statement"]
    manifest["provenance"]["tee_signature"] = sign_statement(TeeKey().private_key, body)
    _resign(pipeline_key)(manifest)
    with pytest.raises(ProvenanceInvalid, match="not signed by the attested TEE"):
        verify(manifest, authority, policy, pipeline_key)


def test_a_manifest_signature_verifies_only_for_its_canonical_content(pipeline_key) -> None:
    document = {"b": 1, "a": [1.5, "x"]}
    document["signatures"] = [signature_entry(pipeline_key, document)]
    verify_manifest_signature({"signatures": document["signatures"], "a": [1.5, "x"], "b": 1}, pipeline_key.public_key())


def test_the_pipeline_key_file_is_made_once_and_private(tmp_path) -> None:
    path = tmp_path / "models" / "signing-key.pem"
    key = load_or_create_signing_key(path)
    assert path.stat().st_mode & 0o077 == 0
    assert load_or_create_signing_key(path).public_key() == key.public_key()


def test_recipient_keys_must_be_pem_rsa_of_2048_bits_or_more() -> None:
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = good.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert recipient_key(pem).kek_id.startswith("recipient:")
    with pytest.raises(RecipientKeyInvalid, match="not a PEM public key"):
        recipient_key(b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(RecipientKeyInvalid, match="needs an RSA key"):
        recipient_key(ec_pem)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(RecipientKeyInvalid, match="2048"):
        recipient_key(small.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
