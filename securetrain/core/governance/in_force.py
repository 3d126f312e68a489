"""Whether a signed contract is in force: every party signed it, it is within its validity, nobody revoked it.

:func:`verify_contract` is the one check every reader of a contract makes (the TEE before it asks for a key
and at each epoch boundary, the ``securetrain contract verify`` command, Airflow before it submits a job). It
fails closed: a revocation that cannot be read or verified denies like a valid one, naming where it came from.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from securetrain.core.errors import SecurityViolation
from securetrain.core.governance.contract import TrainingContract, format_time, parse_time
from securetrain.core.governance.revocation import verify_revocation
from securetrain.core.governance.signatures import SignedContract, verify_signatures


class ContractNotInForce(SecurityViolation):
    """The contract may not be used now; the message names the term (validity) or the revocation."""


class ContractRevoked(ContractNotInForce):
    """A party of the contract revoked it."""

    def __init__(self, party: str, revoked_at: str, reason: str) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(f"party {party!r} revoked the contract at {revoked_at}{because}")
        self.party = party
        self.revoked_at = revoked_at


@dataclass(frozen=True)
class VerifiedContract:
    """A contract every party signed, in force at ``checked_at``."""

    digest: str
    contract: TrainingContract
    #: Every party, in the contract's order: each signed ``digest``.
    signers: tuple[str, ...]
    checked_at: datetime.datetime


def verify_contract(
    signed: SignedContract, revocations: Mapping[str, str], now: datetime.datetime
) -> VerifiedContract:
    """``signed``, checked to be in force at ``now`` (aware).

    ``revocations`` maps where each revocation was read from (a blob or file name, used in errors) to its
    compact JWS: every revocation found for the contract, whoever is believed to have written it.

    Raises:
        ContractSignatureInvalid / ContractSignatureMissing: a party's signature is bad or missing;
        RevocationInvalid: a revocation cannot be verified (fails closed);
        ContractRevoked: a party revoked it; ContractNotInForce: ``now`` is outside its validity.
    """
    if now.tzinfo is None:
        raise ValueError("verify_contract needs an aware time")
    contract = signed.contract
    signers = verify_signatures(signed)
    # Every revocation is checked before any is acted on: one that cannot be verified denies, whatever the others say.
    checked = [verify_revocation(contract, token, source=source) for source, token in sorted(revocations.items())]
    if checked:
        first = min(checked, key=lambda revocation: (revocation.revoked_at, revocation.party))
        raise ContractRevoked(first.party, first.revoked_at, first.reason)
    validity = contract.validity
    if not contract.in_validity(now):
        instant = format_time(now)
        if now < parse_time(validity.not_before):
            raise ContractNotInForce(f"validity.not_before: the contract is not in force before {validity.not_before} "
                                     f"(now {instant})")  # fmt: skip
        raise ContractNotInForce(f"validity.expires: the contract expired at {validity.expires} (now {instant})")
    return VerifiedContract(digest=contract.digest(), contract=contract, signers=signers, checked_at=now)
