"""The signed contract: a :class:`TrainingContract` and one signature per party.

::

    {"contract": {...}, "signatures": [{"party": "hospital-a", "jws": "<header>..<signature>"}]}

Each signature is a compact JWS (RFC 7515) with a detached payload (Appendix F): the payload is the contract's
canonical bytes (:meth:`TrainingContract.canonical_bytes`), which the verifier computes itself, so a
signature cannot be checked against any other text. The protected header names the party (``kid``) and the
digest it signed (``contract_digest``), and its type (:data:`SIGNATURE_TYPE`) keeps a signature from passing
for a revocation made with the same key. A signature verifies only against the key the contract gives that
party; signatures are independent, so parties sign in any order, each on its own machine.
"""

from __future__ import annotations

import json
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, model_validator

from securetrain.core.contracts.base import Contract, Items, matching, refusal
from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.governance import jose
from securetrain.core.governance.contract import MAX_CONTRACT_BYTES, ContractInvalid, SigningKey, Slug, TrainingContract

#: The ``typ`` of a contract signature's protected header.
SIGNATURE_TYPE = "securetrain-contract-signature+jws"
_HEADER = {"kid": str, jose.DIGEST_PARAMETER: str}


class ContractSignatureMissing(SecurityViolation):
    """A party of the contract has not signed it."""

    def __init__(self, party: str) -> None:
        super().__init__(f"party {party!r} has not signed the contract")
        self.party = party


class ContractSignatureInvalid(SecurityViolation):
    """A party's signature is malformed, for another contract, or does not verify with the party's key."""

    def __init__(self, party: str, reason: str) -> None:
        super().__init__(f"the signature of party {party!r} is refused: {reason}")
        self.party = party
        self.reason = reason


class SigningRefused(ConfigurationError):
    """``sign`` was given a party the contract does not name, or a key that is not that party's."""


DetachedJws = matching(r"[A-Za-z0-9_-]{1,1400}\.\.[A-Za-z0-9_-]{1,200}",
                       "A compact JWS with a detached payload: HEADER..SIGNATURE in base64url.")  # fmt: skip


class PartySignature(Contract):
    party: Slug
    jws: DetachedJws


class SignedContract(Contract):
    """A contract and its parties' signatures (module docstring); a proposal has none yet."""

    contract: TrainingContract
    signatures: Annotated[Items[PartySignature], Field(max_length=32)] = ()

    invalid = ContractInvalid

    @model_validator(mode="after")
    def _one_per_party(self) -> SignedContract:
        seen: set[str] = set()
        for index, signature in enumerate(self.signatures):
            if self.contract.party(signature.party) is None:
                raise refusal(f"{signature.party!r} is not a party of the contract", "signatures", index, "party")
            if signature.party in seen:
                raise refusal(f"party {signature.party!r} has signed twice", "signatures", index, "party")
            seen.add(signature.party)
        return self

    @classmethod
    def from_bytes(cls, body: bytes) -> SignedContract:
        """A signed contract file (strict JSON, at most :data:`MAX_CONTRACT_BYTES`); :class:`ContractInvalid` names
        the field that is wrong."""
        return cls.from_body(body, max_bytes=MAX_CONTRACT_BYTES)

    def to_bytes(self) -> bytes:
        """The file: indented JSON (the digest is of the contract's canonical form, not of these bytes)."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def signature(self, party: str) -> PartySignature | None:
        return next((signature for signature in self.signatures if signature.party == party), None)


def signing_party(contract: TrainingContract, party_id: str, private_key: Ed25519PrivateKey) -> None:
    """Check that ``private_key`` is the key ``contract`` gives party ``party_id``, before it signs anything for it.

    Raises:
        SigningRefused: ``party_id`` is not a party, or ``private_key`` is not its key.
    """
    party = contract.party(party_id)
    if party is None:
        known = ", ".join(party.id for party in contract.parties)
        raise SigningRefused(f"{party_id!r} is not a party of contract {contract.contract_id} (its parties: {known})")
    given = SigningKey.of(private_key)
    if given != party.signing_key:
        raise SigningRefused(f"the key given is not party {party_id!r}'s signing key: the contract names key "
                             f"{party.signing_key.key_id[:16]}…, this one is {given.key_id[:16]}…")  # fmt: skip


def sign(signed: SignedContract, party_id: str, private_key: Ed25519PrivateKey) -> SignedContract:
    """``signed`` with ``party_id``'s signature made with ``private_key`` (replacing one it had).

    Raises:
        SigningRefused: ``party_id`` is not a party, or ``private_key`` is not the key the contract gives it.
    """
    contract = signed.contract
    signing_party(contract, party_id, private_key)
    header = {"typ": SIGNATURE_TYPE, "kid": party_id, jose.DIGEST_PARAMETER: contract.digest()}
    token = jose.sign(header, contract.canonical_bytes(), private_key, detached=True)
    others = [signature for signature in signed.signatures if signature.party != party_id]
    signatures = sorted([*others, PartySignature(party=party_id, jws=token)], key=lambda signature: signature.party)
    return SignedContract(contract=contract, signatures=tuple(signatures))


def check_signature(contract: TrainingContract, signature: PartySignature) -> None:
    """Check one party's signature on ``contract``.

    Raises:
        ContractSignatureInvalid: naming the party and why.
    """
    party = contract.party(signature.party)
    if party is None:
        raise ContractSignatureInvalid(signature.party, "it is not a party of the contract")
    try:
        header = jose.protected_header(signature.jws, parameters=_HEADER)
        if header["typ"] != SIGNATURE_TYPE:
            raise jose.JwsRefused(f"it is a {header['typ']!r}, not a {SIGNATURE_TYPE!r}")
        if header["kid"] != party.id:
            raise jose.JwsRefused(f"its header names party {header['kid']!r}")
        digest = contract.digest()
        if header[jose.DIGEST_PARAMETER] != digest:
            raise jose.JwsRefused(f"it was made for contract {header[jose.DIGEST_PARAMETER][:16]}…, not for this one "
                                  f"({digest[:16]}…): the contract changed after it was signed")  # fmt: skip
        jose.verify(signature.jws, party.signing_key, detached_payload=contract.canonical_bytes())
    except jose.JwsRefused as exc:
        raise ContractSignatureInvalid(party.id, str(exc)) from None


def signers(signed: SignedContract) -> tuple[str, ...]:
    """The parties whose signatures verify, in the contract's order.

    Raises:
        ContractSignatureInvalid: a signature that is there does not verify (naming its party).
    """
    for signature in signed.signatures:
        check_signature(signed.contract, signature)
    present = {signature.party for signature in signed.signatures}
    return tuple(party.id for party in signed.contract.parties if party.id in present)


def verify_signatures(signed: SignedContract) -> tuple[str, ...]:
    """Every party's signature, checked: the parties (all of them, in the contract's order).

    Raises:
        ContractSignatureInvalid: a signature does not verify; ContractSignatureMissing: a party has not signed.
    """
    signed_by = signers(signed)
    for party in signed.contract.parties:
        if party.id not in signed_by:
            raise ContractSignatureMissing(party.id)
    return signed_by
