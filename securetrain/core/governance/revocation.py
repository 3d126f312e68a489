"""A revocation: a party of a contract withdraws its consent, in a compact JWS signed with its contract key.

The payload is attached and is the RFC 8785 canonical JSON of :class:`Revocation`::

    {"contract_digest": "<64 hex>", "party": "hospital-a", "reason": "...", "revoked_at": "2026-05-01T12:00:00Z"}

Its protected header carries ``typ`` :data:`REVOCATION_TYPE` and ``kid`` the party. A revocation is checked
against the contract itself: the party is one of its parties, the signature verifies with that party's key,
the payload names that party and this contract's digest. One valid revocation by any party ends the contract
(docs/governance.md); it cannot be withdrawn.
"""

from __future__ import annotations

import datetime
from typing import Annotated

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field

from securetrain.core.contracts.base import Contract, DocumentInvalid, matching
from securetrain.core.contracts.job_spec import ContractDigest
from securetrain.core.errors import SecurityViolation
from securetrain.core.governance import jose
from securetrain.core.governance.contract import Slug, Timestamp, TrainingContract, format_time
from securetrain.core.governance.signatures import signing_party
from securetrain.core.json_input import JsonInputError, read_json_object

#: The ``typ`` of a revocation's protected header.
REVOCATION_TYPE = "securetrain-contract-revocation+jws"
MAX_REVOCATION_BYTES = 8 << 10
MAX_REASON = 500


class RevocationInvalid(SecurityViolation):
    """A revocation cannot be read or verified against the contract; ``source`` names where it came from.

    Whoever checks a contract treats this as a refusal: a revocation that cannot be checked may be a real one.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"the revocation {source} cannot be verified, so the contract is not used: {reason}")
        self.source = source
        self.reason = reason


class RevocationMalformed(DocumentInvalid):
    """A revocation's payload (or what ``revoke`` was asked to write) is not a :class:`Revocation`."""

    document = "revocation"


_Line = matching(r"[^\x00-\x1f\x7f]*", "Text without control characters.")


class Revocation(Contract):
    """What a revocation says: which contract, which party, when, and why."""

    contract_digest: ContractDigest
    party: Slug
    revoked_at: Timestamp
    reason: Annotated[_Line, Field(max_length=MAX_REASON)]

    invalid = RevocationMalformed


def revoke(contract: TrainingContract, party_id: str, private_key: Ed25519PrivateKey, *, reason: str,
           at: datetime.datetime) -> str:  # fmt: skip
    """``party_id``'s revocation of ``contract`` at ``at``, signed with ``private_key``: a compact JWS.

    Raises:
        SigningRefused: ``party_id`` is not a party, or the key is not its key;
        RevocationMalformed: ``reason`` is too long or holds control characters.
    """
    signing_party(contract, party_id, private_key)
    revocation = Revocation.from_json(
        {"contract_digest": contract.digest(), "party": party_id, "revoked_at": format_time(at), "reason": reason}
    )
    payload = rfc8785.dumps(revocation.to_json())
    return jose.sign({"typ": REVOCATION_TYPE, "kid": party_id}, payload, private_key, detached=False)


def verify_revocation(contract: TrainingContract, token: str, *, source: str) -> Revocation:
    """The revocation in ``token`` (read from ``source``), checked against ``contract`` (module docstring).

    Raises:
        RevocationInvalid: anything that keeps it from being checked, naming ``source``.
    """
    try:
        if len(token) > MAX_REVOCATION_BYTES:
            raise jose.JwsRefused(f"it is longer than {MAX_REVOCATION_BYTES} bytes")
        header = jose.protected_header(token, parameters={"kid": str})
        if header["typ"] != REVOCATION_TYPE:
            raise jose.JwsRefused(f"it is a {header['typ']!r}, not a {REVOCATION_TYPE!r}")
        party = contract.party(header["kid"])
        if party is None:
            raise jose.JwsRefused(f"it is signed by {header['kid']!r}, who is not a party of the contract")
        payload = jose.verify(token, party.signing_key)
        document = read_json_object(payload, max_bytes=MAX_REVOCATION_BYTES, what="its payload")
        if rfc8785.dumps(document) != payload:
            raise jose.JwsRefused("its payload is not canonical JSON (RFC 8785)")
        revocation = Revocation.from_json(document)
    except (jose.JwsRefused, JsonInputError, RevocationMalformed) as exc:
        raise RevocationInvalid(source, str(exc)) from None
    if revocation.party != party.id:
        raise RevocationInvalid(source, f"it is signed by {party.id!r} but speaks for {revocation.party!r}")
    if revocation.contract_digest != contract.digest():
        raise RevocationInvalid(source, f"it revokes contract {revocation.contract_digest[:16]}…, not this one")
    return revocation
