"""Signatures, revocations and validity: a contract is in force only when every party signed this very
contract, it is within its validity, and no revocation stands (or fails to verify)."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securetrain.core.governance import jose
from securetrain.core.governance.contract import ContractInvalid
from securetrain.core.governance.in_force import ContractNotInForce, ContractRevoked, verify_contract
from securetrain.core.governance.revocation import RevocationInvalid, revoke, verify_revocation
from securetrain.core.governance.signatures import (
    ContractSignatureInvalid,
    ContractSignatureMissing,
    PartySignature,
    SignedContract,
    SigningRefused,
    check_signature,
    sign,
    signers,
)
from tests.contract_parties import EXPIRES, NOT_BEFORE, NOW, PARTIES, Consortium


@pytest.fixture(scope="module")
def consortium() -> Consortium:
    return Consortium()


@pytest.fixture(scope="module")
def signed(consortium: Consortium) -> SignedContract:
    return consortium.signed()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_contract_every_party_signed_is_in_force(signed: SignedContract) -> None:
    verified = verify_contract(SignedContract.from_bytes(signed.to_bytes()), {}, NOW)
    assert verified.signers == PARTIES
    assert verified.digest == signed.contract.digest()
    header = json.loads(base64.urlsafe_b64decode(signed.signatures[0].jws.split(".")[0] + "=="))
    assert header == {"alg": "Ed25519", "typ": "securetrain-contract-signature+jws", "kid": "hospital-a",
                      "contract_digest": signed.contract.digest()}  # fmt: skip


def test_parties_sign_in_any_order_each_on_its_own(consortium: Consortium, signed: SignedContract) -> None:
    other_order = consortium.signed(by=tuple(reversed(PARTIES)))
    assert other_order.contract.digest() == signed.contract.digest()
    assert verify_contract(other_order, {}, NOW).signers == PARTIES


def test_a_missing_signature_is_named(consortium: Consortium) -> None:
    partly = consortium.signed(by=("hospital-a", "research-lab"))
    assert signers(partly) == ("hospital-a", "research-lab")
    with pytest.raises(ContractSignatureMissing, match="'hospital-b' has not signed") as caught:
        verify_contract(partly, {}, NOW)
    assert caught.value.party == "hospital-b"


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_one_changed_byte_makes_every_signature_refused_naming_its_party(signed: SignedContract, offset: int) -> None:
    text = signed.to_bytes()
    edited = text.replace(b'"epsilon_total": 8.0', b'"epsilon_total": 9.0', 1)  # one byte: more of the owner's budget
    assert sum(a != b for a, b in zip(text, edited, strict=True)) == 1
    changed = SignedContract.from_bytes(edited)
    party = PARTIES[offset]
    with pytest.raises(ContractSignatureInvalid, match="changed after it was signed") as caught:
        check_signature(changed.contract, changed.signature(party))
    assert caught.value.party == party


def test_a_signature_replayed_onto_a_changed_contract_with_its_digest_rewritten_does_not_verify(
    signed: SignedContract,
) -> None:
    document = signed.to_json()
    document["contract"]["outputs"]["export_allowed"] = True
    changed = SignedContract.from_json(document)
    original = signed.signature("hospital-b").jws
    header = json.loads(base64.urlsafe_b64decode(original.split(".")[0] + "=="))
    forged_header = _b64(json.dumps({**header, "contract_digest": changed.contract.digest()}).encode())
    forged = PartySignature(party="hospital-b", jws=f"{forged_header}..{original.split('.')[2]}")
    with pytest.raises(ContractSignatureInvalid, match="'hospital-b'.*does not verify"):
        check_signature(changed.contract, forged)


def test_a_signature_by_another_key_is_refused(consortium: Consortium, signed: SignedContract) -> None:
    # hospital-b's key signs a JWS that claims to be hospital-a's: it must verify with hospital-a's key and does not.
    header = {"typ": "securetrain-contract-signature+jws", "kid": "hospital-a", "contract_digest": signed.contract.digest()}
    token = jose.sign(header, signed.contract.canonical_bytes(), consortium.keys["hospital-b"], detached=True)
    with pytest.raises(ContractSignatureInvalid, match="'hospital-a'.*does not verify"):
        check_signature(signed.contract, PartySignature(party="hospital-a", jws=token))
    with pytest.raises(SigningRefused, match="not party 'hospital-a''s signing key"):
        sign(signed, "hospital-a", consortium.keys["hospital-b"])
    with pytest.raises(SigningRefused, match="not a party"):
        sign(signed, "hospital-c", Ed25519PrivateKey.generate())


@pytest.mark.parametrize(
    "header_change, reason",
    [
        ({"alg": "EdDSA"}, "only 'Ed25519'"),
        ({"typ": "securetrain-contract-revocation+jws"}, r"not a 'securetrain-contract-signature\+jws'"),
        ({"kid": "hospital-b"}, "names party 'hospital-b'"),
        ({"b64": False}, "exactly"),
        ({"jwk": {"kty": "OKP"}}, "exactly"),
    ],
)
def test_a_header_other_than_the_one_a_party_signs_is_refused(
    consortium: Consortium, signed: SignedContract, header_change: dict, reason: str
) -> None:
    original = signed.signature("hospital-a").jws
    header = {**json.loads(base64.urlsafe_b64decode(original.split(".")[0] + "==")), **header_change}
    token = f"{_b64(json.dumps(header).encode())}..{original.split('.')[2]}"
    with pytest.raises(ContractSignatureInvalid, match=reason):
        check_signature(signed.contract, PartySignature(party="hospital-a", jws=token))


def test_a_signature_that_brings_its_own_payload_is_refused(consortium: Consortium, signed: SignedContract) -> None:
    header = {"typ": "securetrain-contract-signature+jws", "kid": "hospital-a", "contract_digest": signed.contract.digest()}
    attached = jose.sign(header, b"{}", consortium.keys["hospital-a"], detached=False)
    with pytest.raises(ContractInvalid):  # not even a detached JWS: the document refuses it
        SignedContract.from_json({**signed.to_json(), "signatures": [{"party": "hospital-a", "jws": attached}]})


def test_a_signature_for_a_party_not_in_the_contract_or_twice_is_refused(signed: SignedContract) -> None:
    document = signed.to_json()
    twice = {**document, "signatures": [document["signatures"][0], document["signatures"][0]]}
    with pytest.raises(ContractInvalid) as caught:
        SignedContract.from_json(twice)
    assert caught.value.field == "signatures[1].party"
    stranger = {**document, "signatures": [{**document["signatures"][0], "party": "hospital-c"}]}
    with pytest.raises(ContractInvalid) as caught:
        SignedContract.from_json(stranger)
    assert caught.value.field == "signatures[0].party"


def test_a_revoked_contract_is_not_in_force(consortium: Consortium, signed: SignedContract) -> None:
    token = revoke(signed.contract, "hospital-b", consortium.keys["hospital-b"], reason="consent withdrawn", at=NOW)
    revocation = verify_revocation(signed.contract, token, source="b.jws")
    assert (revocation.party, revocation.revoked_at) == ("hospital-b", "2026-06-01T12:00:00Z")
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert payload == rfc8785.dumps(revocation.to_json())
    with pytest.raises(ContractRevoked, match="'hospital-b' revoked the contract at 2026-06-01T12:00:00Z") as caught:
        verify_contract(signed, {"b.jws": token}, NOW)
    assert (caught.value.party, caught.value.revoked_at) == ("hospital-b", "2026-06-01T12:00:00Z")


def test_a_revocation_that_cannot_be_verified_denies_naming_it(consortium: Consortium, signed: SignedContract) -> None:
    document = signed.to_json()
    document["contract"]["purpose"] = "Another purpose."
    another = SignedContract.from_json(document)
    for_another = revoke(another.contract, "hospital-a", consortium.keys["hospital-a"], reason="", at=NOW)
    forged = revoke(signed.contract, "hospital-a", consortium.keys["hospital-a"], reason="", at=NOW)
    header, payload, signature = forged.split(".")
    cases = {
        "junk.jws": ("not a JWS", "not a compact JWS"),
        "another.jws": (for_another, "not this one"),
        "tampered.jws": (f"{header}.{_b64(base64.urlsafe_b64decode(payload + '==').replace(b'hospital-a', b'hospital-b'))}"
                         f".{signature}", "does not verify"),
        "stranger.jws": (revoke(signed.contract, "hospital-a", consortium.keys["hospital-a"], reason="", at=NOW)
                         .replace(header, _b64(json.dumps({"alg": "Ed25519", "typ": "securetrain-contract-revocation+jws",
                                                           "kid": "hospital-c"}).encode())), "not a party"),
        "signature.jws": (signed.signature("hospital-a").jws, "must have exactly"),
    }  # fmt: skip
    for source, (token, reason) in cases.items():
        with pytest.raises(RevocationInvalid, match=reason) as caught:
            verify_contract(signed, {"a-valid-one.jws": forged, source: token} if source != "junk.jws" else {source: token},
                            NOW)  # fmt: skip
        assert caught.value.source == source


def test_a_revocation_by_one_party_in_anothers_name_is_refused(consortium: Consortium, signed: SignedContract) -> None:
    payload = rfc8785.dumps({"contract_digest": signed.contract.digest(), "party": "hospital-b",
                             "revoked_at": "2026-06-01T12:00:00Z", "reason": ""})  # fmt: skip
    token = jose.sign({"typ": "securetrain-contract-revocation+jws", "kid": "hospital-a"}, payload,
                      consortium.keys["hospital-a"], detached=False)  # fmt: skip
    with pytest.raises(RevocationInvalid, match="speaks for 'hospital-b'"):
        verify_revocation(signed.contract, token, source="x.jws")


def test_validity_is_from_not_before_until_expires(signed: SignedContract) -> None:
    assert verify_contract(signed, {}, NOT_BEFORE).checked_at == NOT_BEFORE
    with pytest.raises(ContractNotInForce, match="validity.not_before"):
        verify_contract(signed, {}, NOT_BEFORE - datetime.timedelta(microseconds=1))
    with pytest.raises(ContractNotInForce, match="validity.expires"):
        verify_contract(signed, {}, EXPIRES)
    verify_contract(signed, {}, EXPIRES - datetime.timedelta(seconds=1))


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(body=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_fuzzed_contract_files_raise_only_contract_invalid(body: bytes) -> None:
    try:
        SignedContract.from_bytes(body)
    except ContractInvalid:
        pass


@_FUZZ
@given(data=st.data())
def test_fuzzed_edits_of_a_signed_contract_raise_only_the_projects_errors(signed: SignedContract, data: st.DataObject) -> None:
    text = signed.to_bytes()
    position = data.draw(st.integers(0, len(text) - 1))
    edited = text[:position] + data.draw(st.binary(min_size=0, max_size=4)) + text[position + 1:]
    try:
        verify_contract(SignedContract.from_bytes(edited), {}, NOW)
    except (ContractInvalid, ContractSignatureInvalid, ContractSignatureMissing, ContractNotInForce):
        pass


_TOKEN_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/{}\":", max_size=300)


@_FUZZ
@given(token=_TOKEN_TEXT | st.text(max_size=100))
def test_fuzzed_revocations_and_signatures_raise_only_their_refusals(signed: SignedContract, token: str) -> None:
    with pytest.raises(RevocationInvalid):
        verify_revocation(signed.contract, token, source="fuzz.jws")
    try:
        check_signature(signed.contract, PartySignature.model_construct(party="hospital-a", jws=token))
    except ContractSignatureInvalid:
        pass


@_FUZZ
@given(header=st.dictionaries(st.sampled_from(["alg", "typ", "kid", "contract_digest", "crit", "b64", "x"]),
                              st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.lists(st.text(max_size=5))))
def test_fuzzed_headers_raise_only_their_refusals(signed: SignedContract, header: dict) -> None:
    token = f"{_b64(json.dumps(header).encode())}..{signed.signatures[0].jws.split('.')[2]}"
    with pytest.raises(ContractSignatureInvalid):
        check_signature(signed.contract, PartySignature.model_construct(party="hospital-a", jws=token))
