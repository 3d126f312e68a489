"""MAA's ``x-ms-policy-hash`` and the policy JWS, as Microsoft's documentation defines them."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.localstack.standins.attestation_service.policy_jws import (
    PolicyJwsInvalid,
    check_reset_jws,
    jws_hash,
    policy_text,
    unsigned_policy_jws,
)
from tests.unit.test_attestation_policy_language import UNSIGNED_SGX_PAYLOAD, unsigned_sgx_policy

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


POLICY = 'version=1.0;\nauthorizationrules\n{\n    => permit();\n};\n'


def test_the_hash_is_the_documented_base64url_sha256_of_the_base64url_text() -> None:
    # claim-sets: BASE64URL(SHA256(UTF8(BASE64URL(UTF8(policy text))))), base64url without padding.
    inner = base64.urlsafe_b64encode(POLICY.encode()).rstrip(b"=")
    expected = base64.urlsafe_b64encode(hashlib.sha256(inner).digest()).rstrip(b"=").decode()
    assert maa_policy_hash(POLICY) == expected and len(expected) == 43 and "=" not in expected


def test_the_inner_encoding_is_the_one_maa_stores_a_policy_in() -> None:
    """The documented unsigned policy JWS carries its text as exactly the string the hash is taken over."""
    stored = json.loads(base64.urlsafe_b64decode(UNSIGNED_SGX_PAYLOAD + "=="))["AttestationPolicy"]
    text = unsigned_sgx_policy()
    assert base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode() == stored
    assert maa_policy_hash(text) == base64.urlsafe_b64encode(hashlib.sha256(stored.encode()).digest()).rstrip(b"=").decode()


def test_one_changed_character_is_another_policy() -> None:
    assert maa_policy_hash(POLICY) != maa_policy_hash(POLICY.replace("    ", "  "))
    assert maa_policy_hash(POLICY) != maa_policy_hash(POLICY + "\n")


def test_unsigned_jws_round_trip_and_the_token_hash() -> None:
    jws = unsigned_policy_jws(POLICY)
    assert jws.startswith("eyJhbGciOiJub25lIn0.") and jws.endswith(".")
    assert policy_text(jws) == POLICY
    assert jws_hash(jws) == hashlib.sha256(jws.encode()).digest()
    check_reset_jws("eyJhbGciOiJub25lIn0..")


def test_the_sdk_builds_the_jws_this_service_reads() -> None:
    from azure.security.attestation import AttestationPolicyToken

    assert policy_text(AttestationPolicyToken(POLICY).to_jwt_string()) == POLICY


@pytest.mark.parametrize(
    ("jws", "message"),
    [
        ("not a jws", "not a JWS"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "signed (alg 'RS256')"),
        ("eyJhbGciOiJub25lIn0.e30.c2ln", "signed"),
        ("eyJhbGciOiJub25lIn0.e30.", "must be {\"AttestationPolicy\""),
        ("eyJhbGciOiJub25lIn0.bm90IGpzb24.", "not JSON"),
        ("eyJhbGciOiJub25lIn0." + _b64url(json.dumps({"AttestationPolicy": _b64url(b"\xff\xfe")}).encode()) + ".", "not UTF-8"),
        ("eyJhbGciOiJub25lIn0." + _b64url(json.dumps({"AttestationPolicy": "////"}).encode()) + ".", "not base64url"),
        ("e30.e30.", "signed (alg None)"),
        ("eyJhbGciOiJub25lIn0.e31.", "not canonical"),
        ("eyJhbGciOiJub25lIn0.*.", "not base64url"),
    ],
)
def test_what_is_not_an_unsigned_policy_jws_is_refused(jws: str, message: str) -> None:
    with pytest.raises(PolicyJwsInvalid) as refused:
        policy_text(jws)
    assert message in str(refused.value)


def test_a_reset_carries_no_policy() -> None:
    with pytest.raises(PolicyJwsInvalid, match="empty JWS payload"):
        check_reset_jws(unsigned_policy_jws(POLICY))
