"""did:x509: the genuine chain answers to Microsoft's issuer; identifiers and chains that do not match are refused."""

from __future__ import annotations

import base64
import hashlib

import cbor2
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.aci.did_x509 import DidX509Mismatch, check_chain_matches
from securetrain.core.aci.uvm_endorsement import CONTAINERPLAT_AMD_UVM
from tests.aci_evidence import CONTAINERPLAT_EKU, endorsement_parts, own_signer

GENUINE_CHAIN = [x509.load_der_x509_certificate(der) for der in cbor2.loads(endorsement_parts()[0])[33]]


def did(fingerprint: bytes, algorithm: str = "sha256", predicates: str = f"::eku:{CONTAINERPLAT_EKU}") -> str:
    encoded = base64.urlsafe_b64encode(fingerprint).rstrip(b"=").decode()
    return f"did:x509:0:{algorithm}:{encoded}{predicates}"


def own_chain(signer=None) -> list[x509.Certificate]:
    signer = signer or own_signer()
    return [signer.leaf, signer.intermediate, signer.root]


def test_genuine_chain_answers_to_microsofts_issuer() -> None:
    check_chain_matches(CONTAINERPLAT_AMD_UVM.issuer, GENUINE_CHAIN)


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("ca", [1, 2])
def test_any_ca_of_the_chain_with_any_listed_digest(algorithm: str, ca: int) -> None:
    signer = own_signer()
    check_chain_matches(did(hashlib.new(algorithm, signer.chain[ca]).digest(), algorithm), own_chain())


def test_several_predicates_must_all_hold() -> None:
    root = hashlib.sha256(own_signer().chain[2]).digest()
    check_chain_matches(did(root, predicates=f"::eku:{CONTAINERPLAT_EKU}::eku:1.3.6.1.4.1.311.76.59.1.1"), own_chain())
    with pytest.raises(DidX509Mismatch, match="1.3.6.1.5.5.7.3.3"):
        check_chain_matches(did(root, predicates=f"::eku:{CONTAINERPLAT_EKU}::eku:1.3.6.1.5.5.7.3.3"), own_chain())


ROOT = hashlib.sha256(own_signer().chain[2]).digest()


@pytest.mark.parametrize(
    ("identifier", "reason"),
    [
        (did(hashlib.sha256(own_signer().chain[0]).digest()), "no CA certificate"),  # the leaf is no CA
        (did(hashlib.sha256(b"another CA").digest()), "no CA certificate"),
        (did(ROOT).replace("did:x509:0:", "did:x509:1:"), "method version 0"),
        (did(hashlib.sha1(own_signer().chain[2]).digest(), "sha1"), "sha256, sha384 or sha512"),
        (did(ROOT).replace("::eku", "=::eku"), "base64url"),
        (did(ROOT[:31]), "32-byte digest"),
        (did(ROOT, predicates=""), "no predicate"),
        (did(ROOT, predicates="::subject:CN:test%20ContainerPlat"), "not supported"),
        (did(ROOT, predicates="::issuer:CN:x"), "not a did:x509 predicate"),
        (did(ROOT, predicates="::eku"), "<name>:<value>"),
        (did(ROOT, predicates="::eku:codeSigning"), "dotted OID"),
        (did(ROOT, predicates="::eku:1.3.6.1.5.5.7.3.3"), "do not include"),
        ("did:web:example.com", "method version 0"),
    ],
)
def test_identifiers_that_do_not_match_are_refused(identifier: str, reason: str) -> None:
    with pytest.raises(DidX509Mismatch, match=reason):
        check_chain_matches(identifier, own_chain())


def test_a_chain_of_one_certificate_is_refused() -> None:
    with pytest.raises(DidX509Mismatch, match="at least one CA"):
        check_chain_matches(did(ROOT), own_chain()[:1])


def test_leaf_without_extended_key_usage_is_refused() -> None:
    with pytest.raises(DidX509Mismatch, match="no extended key usage"):
        check_chain_matches(did(ROOT), own_chain(own_signer().with_leaf(eku=None)))


def test_critical_extension_outside_the_allowed_set_is_refused() -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    signer = own_signer().with_leaf(extra=((unknown, True),))
    with pytest.raises(DidX509Mismatch, match="critical extension 1.3.6.1.4.1.99999.1"):
        check_chain_matches(did(ROOT), own_chain(signer))
    check_chain_matches(did(ROOT), own_chain(own_signer().with_leaf(extra=((unknown, False),))))


def test_leaf_whose_key_usage_excludes_signatures_is_refused() -> None:
    signer = own_signer().with_leaf(key_usage={"key_encipherment": True})
    with pytest.raises(DidX509Mismatch, match="digital signatures"):
        check_chain_matches(did(ROOT), own_chain(signer))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_identifiers_raise_only_the_mismatch(identifier: str) -> None:
    try:
        check_chain_matches(identifier, GENUINE_CHAIN)
    except DidX509Mismatch:
        pass
