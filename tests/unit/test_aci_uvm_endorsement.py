"""The UVM endorsement: Microsoft's genuine one verifies; every change to what it signs is refused by name."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.aci.errors import AciEvidenceError
from securetrain.core.aci.uvm_endorsement import CONTAINERPLAT_AMD_UVM, UvmEndorsement
from tests.aci_evidence import (
    ENDORSEMENT,
    MEASUREMENT,
    NOW,
    SIGNED_AT,
    cose_sign1,
    endorsement_parts,
    flipped,
    own_signer,
)


def verify(endorsement: bytes, trust=CONTAINERPLAT_AMD_UVM, now: datetime.datetime = NOW):
    return UvmEndorsement.decode(endorsement).verify(trust, now=now)


def refused(endorsement: bytes, trust=CONTAINERPLAT_AMD_UVM, now: datetime.datetime = NOW) -> str:
    with pytest.raises(AciEvidenceError) as caught:
        verify(endorsement, trust, now)
    assert str(caught.value).startswith(caught.value.check + ": ")
    return caught.value.check


def test_genuine_endorsement_verifies() -> None:
    verified = verify(ENDORSEMENT)
    assert verified.launch_measurement == MEASUREMENT
    assert verified.svn == 103
    assert verified.feed == "ContainerPlat-AMD-UVM"
    assert verified.signing_time == SIGNED_AT
    assert not verified.trust.simulated
    assert verified.claim() == {
        "x-ms-sevsnpvm-guestsvn": "103",
        "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(),
    }


def test_pinned_root_is_the_root_certificate_in_the_genuine_endorsement() -> None:
    root_der = endorsement_parts()[0]
    root = x509.load_der_x509_certificate(cbor2.loads(root_der)[33][-1])
    spki = root.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(spki).digest() == CONTAINERPLAT_AMD_UVM.root_spki_sha256
    assert root.subject.rfc4514_string() == "CN=Microsoft Supply Chain RSA Root CA 2022,O=Microsoft Corporation,C=US"
    assert root.subject == root.issuer
    # The pinned issuer names the same certificate: its fingerprint is the SHA-256 of that root's DER.
    fingerprint = base64.urlsafe_b64encode(hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).digest())
    assert CONTAINERPLAT_AMD_UVM.issuer.split(":")[4] == fingerprint.rstrip(b"=").decode()


def test_chain_is_judged_at_the_signing_time_not_now() -> None:
    # The leaf expired on 2026-05-15; the endorsement, signed in its life, still vouches for the UVM.
    assert verify(ENDORSEMENT, now=datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC)).svn == 103
    assert refused(ENDORSEMENT, now=SIGNED_AT - datetime.timedelta(seconds=1)) == "uvm-endorsement.signing-time"


def test_every_signed_byte_is_protected_and_the_unprotected_header_is_not_read() -> None:
    """Flip each signed byte (and every 16th unsigned one) in turn: refused, unless it lies in the unsigned header."""
    protected, unprotected, payload, signature = endorsement_parts()
    unprotected_encoded = cbor2.dumps(unprotected)
    unsigned_start = ENDORSEMENT.index(unprotected_encoded)
    unsigned = range(unsigned_start, unsigned_start + len(unprotected_encoded))
    checks = set()
    for offset in range(len(ENDORSEMENT)):
        if offset in unsigned and offset % 16:
            continue
        changed = flipped(ENDORSEMENT, offset, 1 << offset % 8)
        try:
            verified = verify(changed)
        except AciEvidenceError as refusal:
            checks.add(refusal.check)
            continue
        assert offset in unsigned, f"a change at byte {offset} was accepted"
        assert verified.launch_measurement == MEASUREMENT
    assert {"uvm-endorsement.signature", "uvm-endorsement.cose-structure", "uvm-endorsement.x5chain"} <= checks


@pytest.mark.parametrize("region", ["payload", "signature"])
def test_payload_and_signature_changes_fail_the_signature(region: str) -> None:
    protected, unprotected, payload, signature = endorsement_parts()
    for offset in range(0, len(payload if region == "payload" else signature), 5):
        if region == "payload":
            changed = cose_sign1(protected, unprotected, flipped(payload, offset), signature)
        else:
            changed = cose_sign1(protected, unprotected, payload, flipped(signature, offset))
        assert refused(changed) == "uvm-endorsement.signature"


@pytest.mark.parametrize(
    ("old", "new", "check"),
    [
        (bytes.fromhex("c11a68dc1236"), bytes.fromhex("c11a68dc1237"), "uvm-endorsement.signature"),  # signingtime +1 s
        (b"ContainerPlat-AMD-UVM", b"ContainerPlat-AMD-UVX", "uvm-endorsement.feed"),
        (b"::eku:1.3.6.1.4.1.311.76.59.1.2", b"::eku:1.3.6.1.4.1.311.76.59.1.1", "uvm-endorsement.issuer"),
        (b"application/json", b"application/jsom", "uvm-endorsement.content-type"),
        (bytes.fromhex("013825"), bytes.fromhex("013824"), "uvm-endorsement.algorithm"),  # alg -38 -> -37
    ],
)
def test_protected_header_changes_are_refused_by_name(old: bytes, new: bytes, check: str) -> None:
    assert ENDORSEMENT.count(old) == 1
    assert refused(ENDORSEMENT.replace(old, new)) == check


def test_a_certificate_of_the_x5chain_changed_is_refused() -> None:
    protected, unprotected, payload, signature = endorsement_parts()
    headers = cbor2.loads(protected)
    leaf, intermediate, root = headers[33]
    # A byte of the intermediate's signature: still DER, no longer signed by the root.
    headers[33] = [leaf, flipped(intermediate, len(intermediate) - 10), root]
    assert refused(cose_sign1(cbor2.dumps(headers), unprotected, payload, signature)) == "uvm-endorsement.chain"
    # Leaf and intermediate swapped: not leaf first.
    headers[33] = [intermediate, leaf, root]
    assert refused(cose_sign1(cbor2.dumps(headers), unprotected, payload, signature)) == "uvm-endorsement.chain"


def test_own_signer_verifies_under_its_own_trust_only() -> None:
    signer = own_signer()
    endorsement = signer.endorse()
    verified = verify(endorsement, signer.trust)
    assert verified.trust.simulated and verified.svn == 103
    # A chain rooted anywhere but at Microsoft's root is refused under Microsoft's trust.
    assert refused(endorsement) == "uvm-endorsement.root"
    # Microsoft's chain with the test leaf's signature: the root matches, the signature does not.
    protected, unprotected, payload, _ = endorsement_parts()
    forged = cose_sign1(protected, unprotected, payload, endorsement_parts(endorsement)[3])
    assert refused(forged) == "uvm-endorsement.signature"


@pytest.mark.parametrize(
    ("headers", "check"),
    [
        ({"alg": -37}, "uvm-endorsement.algorithm"),
        ({"alg": None}, "uvm-endorsement.algorithm"),
        ({"content_type": None}, "uvm-endorsement.content-type"),
        ({"x5chain": None}, "uvm-endorsement.x5chain"),
        ({"iss": None}, "uvm-endorsement.issuer"),
        ({"feed": "ConfAKS-AMD-UVM"}, "uvm-endorsement.feed"),
        ({"signingtime": None}, "uvm-endorsement.signing-time"),
        ({"signingtime": "2025-09-30"}, "uvm-endorsement.signing-time"),
        ({"crit": ["x-unknown"]}, "uvm-endorsement.cose-structure"),
        ({"crit": []}, "uvm-endorsement.cose-structure"),
        ({"crit": [True]}, "uvm-endorsement.cose-structure"),
    ],
)
def test_headers_are_checked_by_name(headers: dict, check: str) -> None:
    assert refused(own_signer().endorse(**headers), own_signer().trust) == check


def test_understood_crit_is_accepted() -> None:
    signer = own_signer()
    assert verify(signer.endorse(crit=["feed", "iss"]), signer.trust).feed == "ContainerPlat-AMD-UVM"


def test_x5chain_shape_is_checked() -> None:
    signer = own_signer()
    assert refused(signer.endorse(x5chain=signer.chain[:1]), signer.trust) == "uvm-endorsement.x5chain"
    assert refused(signer.endorse(x5chain=signer.chain[0]), signer.trust) == "uvm-endorsement.x5chain"
    assert refused(signer.endorse(x5chain=[b"not DER", *signer.chain[1:]]), signer.trust) == "uvm-endorsement.x5chain"
    # A certificate more than the path: refused, x5chain must be exactly leaf → CAs → root.
    extra = signer.chain[:2] + [signer.chain[1], signer.chain[2]]
    assert refused(signer.endorse(x5chain=extra), signer.trust) == "uvm-endorsement.chain"


def test_signing_time_outside_the_leaf_life_is_refused() -> None:
    signer = own_signer()  # its leaf lives in 2025
    late = signer.endorse(signing_time=datetime.datetime(2026, 2, 1, tzinfo=datetime.UTC))
    assert refused(late, signer.trust) == "uvm-endorsement.chain"
    early = signer.endorse(signing_time=datetime.datetime(2024, 12, 31, tzinfo=datetime.UTC))
    assert refused(early, signer.trust) == "uvm-endorsement.chain"
    future = signer.endorse(signing_time=datetime.datetime(2025, 12, 1, tzinfo=datetime.UTC))
    assert refused(future, signer.trust, now=datetime.datetime(2025, 11, 30, tzinfo=datetime.UTC)) == (
        "uvm-endorsement.signing-time"
    )


def test_issuer_must_be_the_trusted_one_even_when_it_resolves() -> None:
    signer = own_signer()
    # A DID pinned to the intermediate instead of the root resolves against the chain, but is not the trust's.
    intermediate = hashlib.sha256(signer.chain[1]).digest()
    did = f"did:x509:0:sha256:{base64.urlsafe_b64encode(intermediate).rstrip(b'=').decode()}::eku:1.3.6.1.4.1.311.76.59.1.2"
    assert refused(signer.endorse(iss=did), signer.trust) == "uvm-endorsement.issuer"


def test_leaf_without_the_containerplat_eku_is_refused() -> None:
    signer = own_signer()
    code_signing = signer.with_leaf(eku=["1.3.6.1.5.5.7.3.3"])
    with pytest.raises(AciEvidenceError, match="do not include 1.3.6.1.4.1.311.76.59.1.2") as caught:
        verify(code_signing.endorse(), signer.trust)
    assert caught.value.check == "uvm-endorsement.issuer"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex()}, "guestsvn"),
        ({"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex()[:-2], "x-ms-sevsnpvm-guestsvn": "1"}, "hex digits"),
        ({"x-ms-sevsnpvm-launchmeasurement": "zz" * 48, "x-ms-sevsnpvm-guestsvn": "1"}, "not hex"),
        ({"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(), "x-ms-sevsnpvm-guestsvn": "-1"}, "unsigned"),
        ({"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(), "x-ms-sevsnpvm-guestsvn": "01"}, "unsigned"),
        ({"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(), "x-ms-sevsnpvm-guestsvn": True}, "unsigned"),
        (
            {"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(), "x-ms-sevsnpvm-guestsvn": "5",
             "x-ms-sevsnpvm-guestsvn-int": 6},
            "differs",
        ),  # fmt: skip
        ({"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(), "x-ms-sevsnpvm-guestsvn": "5", "extra": 1}, "extra"),
    ],
)
def test_payload_is_read_strictly(payload: dict, reason: str) -> None:
    signer = own_signer()
    with pytest.raises(AciEvidenceError, match=reason) as caught:
        verify(signer.endorse(payload=payload), signer.trust)
    assert caught.value.check == "uvm-endorsement.payload"


def test_svn_may_be_an_integer() -> None:
    signer = own_signer()
    payload = {"x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(), "x-ms-sevsnpvm-guestsvn": 7}
    assert verify(signer.endorse(payload=payload), signer.trust).claim()["x-ms-sevsnpvm-guestsvn"] == "7"


@pytest.mark.parametrize(
    ("data", "check"),
    [
        (b"", "uvm-endorsement.cose-structure"),
        (cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""])), "uvm-endorsement.cose-structure"),
        (cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])), "uvm-endorsement.cose-structure"),
        (cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", {}, None, b""])), "uvm-endorsement.cose-structure"),
        (cbor2.dumps(cbor2.CBORTag(18, [b"\x80", {}, b"", b""])), "uvm-endorsement.cose-structure"),
        (cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({True: -38}), {}, b"", b""])), "uvm-endorsement.cose-structure"),
        (ENDORSEMENT + b"\x00", "uvm-endorsement.cose-structure"),
        (b"\x00" * (65 << 10), "uvm-endorsement.cose-structure"),
    ],
)
def test_structure_is_checked(data: bytes, check: str) -> None:
    with pytest.raises(AciEvidenceError) as caught:
        UvmEndorsement.decode(data)
    assert caught.value.check == check


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decoding_random_bytes_raises_only_the_project_error(data: bytes) -> None:
    try:
        UvmEndorsement.decode(data)
    except AciEvidenceError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_endorsements_raise_only_the_project_error(data: st.DataObject) -> None:
    endorsement = bytearray(ENDORSEMENT)
    for _ in range(data.draw(st.integers(1, 8))):
        offset = data.draw(st.integers(0, len(endorsement) - 1))
        endorsement[offset] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(endorsement)))
    try:
        verify(bytes(endorsement[:cut]) if data.draw(st.booleans()) else bytes(endorsement))
    except AciEvidenceError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.integers(-40, 40) | st.text(max_size=8), children, max_size=4),
    max_leaves=20,
))  # fmt: skip
def test_hostile_protected_headers_raise_only_the_project_error(headers) -> None:
    _, unprotected, payload, signature = endorsement_parts()
    try:
        verify(cose_sign1(cbor2.dumps(headers), unprotected, payload, signature))
    except AciEvidenceError:
        pass


def test_payload_json_is_what_the_genuine_endorsement_says() -> None:
    payload = json.loads(endorsement_parts()[2])
    assert payload == {
        "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(),
        "x-ms-sevsnpvm-guestsvn": "103",
        "x-ms-sevsnpvm-guestsvn-int": 103,
    }
