"""The TEE's statement: its ephemeral key and the nonce, bound into REPORT_DATA; nonces and renewal timing."""

from __future__ import annotations

import hashlib
import json

import pytest
from joserfc.jwk import RSAKey

from securetrain.core.attestation.maa import report_data_for
from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.tee.attest import TEE_KEY_BITS, TeeKey, attestation_nonce, renewal_delay, runtime_data


@pytest.fixture(scope="module")
def tee_key() -> TeeKey:
    return TeeKey()


def test_the_key_is_rsa_3072_and_its_kid_is_the_rfc7638_thumbprint(tee_key: TeeKey) -> None:
    assert tee_key.private_key.key_size == TEE_KEY_BITS == 3072
    jwk = tee_key.public_jwk()
    assert jwk["kid"] == RSAKey.import_key({k: v for k, v in jwk.items() if k in ("kty", "n", "e")}).thumbprint()
    assert "d" not in jwk and "p" not in jwk


def test_runtime_data_binds_key_and_nonce_into_report_data(tee_key: TeeKey) -> None:
    statement = runtime_data(tee_key, "job-nonce-0123456789abcdef")
    document = json.loads(statement)
    assert document == {"keys": [tee_key.public_jwk()], "nonce": "job-nonce-0123456789abcdef"}
    report_data = report_data_for(statement)
    assert len(report_data) == 64
    assert report_data[:32] == hashlib.sha256(statement).digest() and report_data[32:] == bytes(32)


def test_another_nonce_or_key_gives_other_report_data(tee_key: TeeKey) -> None:
    base = report_data_for(runtime_data(tee_key, "a" * 22))
    assert report_data_for(runtime_data(tee_key, "b" * 22)) != base
    assert report_data_for(runtime_data(TeeKey(), "a" * 22)) != base


def test_the_key_recognises_only_itself(tee_key: TeeKey) -> None:
    assert tee_key.matches(tee_key.public_jwk())
    assert not tee_key.matches(TeeKey().public_jwk())
    assert "PRIVATE" not in repr(tee_key)


def test_attestation_nonces_never_repeat_within_a_job() -> None:
    nonces = [attestation_nonce("job-nonce", n) for n in range(5)]
    assert nonces[0] == "job-nonce" and nonces[3] == "job-nonce.3"
    assert len(set(nonces)) == 5
    with pytest.raises(ValueError):
        attestation_nonce("job-nonce", -1)


def token(iat: int, exp: int) -> ValidatedToken:
    return ValidatedToken("raw", {"iat": iat, "exp": exp}, "kid")


def test_renewal_is_due_at_three_quarters_of_the_lifetime() -> None:
    assert renewal_delay(token(1000, 1400), now=1000) == 300
    assert renewal_delay(token(1000, 1400), now=1250) == 50


def test_an_overdue_renewal_runs_almost_at_once() -> None:
    assert renewal_delay(token(1000, 1400), now=1399) == 1.0
