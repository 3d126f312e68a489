"""Signed contracts and their revocations in blob storage, where the TEE and Airflow read them.

Layout in the contracts container (``ContractRef.container`` of a job spec)::

    <digest>/contract.json                 the signed contract whose contract hashes to <digest>
    <digest>/revocations/<party>.jws       a party's revocation (compact JWS)

Storage is untrusted: whatever is read back is checked, not believed. :meth:`ContractStore.read` accepts only
bytes that parse as a signed contract whose digest is the one asked for; its signatures and revocations are
checked by :func:`securetrain.core.governance.in_force.verify_contract`. Nothing is overwritten: a contract's
name is its digest, and a party revokes once.
"""

from __future__ import annotations

import io
import re

from securetrain.core.contracts.job_spec import SHA256_HEX
from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.governance.contract import MAX_CONTRACT_BYTES, ContractInvalid
from securetrain.core.governance.revocation import MAX_REVOCATION_BYTES, verify_revocation
from securetrain.core.governance.signatures import SignedContract, verify_signatures
from securetrain.core.storage import BlobAlreadyExists, BlobStore

#: Where a deployment keeps its contracts (the local stack, ``securetrain contract publish``, Airflow's form).
CONTRACTS_CONTAINER = "contracts"
CONTRACT_BLOB = "contract.json"
REVOCATIONS = "revocations/"
#: More revocation blobs than a contract can have parties is not what a party wrote; the reader refuses.
MAX_REVOCATIONS = 32
_DIGEST = re.compile(SHA256_HEX)


class StoredContractInvalid(SecurityViolation):
    """What storage holds under a contract's digest is not that contract (or is too large to be one)."""


def _digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ConfigurationError(f"{digest!r} is not a contract digest (64 lowercase hex digits)")
    return digest


class ContractStore:
    """The signed contracts in ``container`` of ``store`` (module docstring)."""

    def __init__(self, store: BlobStore, container: str) -> None:
        self._store = store
        self._container = container

    def _read(self, blob: str, limit: int) -> bytes:
        body = bytearray()
        for chunk in self._store.download_chunks(self._container, blob):
            body += chunk
            if len(body) > limit:
                raise StoredContractInvalid(f"{self._container}/{blob} is larger than {limit} bytes")
        return bytes(body)

    def publish(self, signed: SignedContract) -> str:
        """Store ``signed``, which every party must have signed, at ``<digest>/contract.json``; its digest.

        Publishing the same contract again changes nothing.

        Raises:
            ContractSignatureInvalid / ContractSignatureMissing: not every party's signature verifies.
        """
        verify_signatures(signed)
        digest = signed.contract.digest()
        body = signed.to_bytes()
        self._store.ensure_container(self._container)
        try:
            self._store.upload_stream(self._container, f"{digest}/{CONTRACT_BLOB}", io.BytesIO(body), length=len(body))
        except BlobAlreadyExists:
            self.read(digest)  # what is there must be this contract
        return digest

    def read(self, digest: str) -> SignedContract:
        """The signed contract stored under ``digest``: parsed, and its contract hashing to ``digest``.

        Raises:
            StoredContractInvalid: it does not parse, is too large, or is another contract;
            BlobNotFound: nothing is stored under ``digest``.
        """
        blob = f"{_digest(digest)}/{CONTRACT_BLOB}"
        try:
            signed = SignedContract.from_bytes(self._read(blob, MAX_CONTRACT_BYTES))
        except ContractInvalid as exc:
            raise StoredContractInvalid(f"{self._container}/{blob} is not a signed contract: {exc}") from None
        if signed.contract.digest() != digest:
            raise StoredContractInvalid(f"{self._container}/{blob} holds contract {signed.contract.digest()[:16]}…, "
                                        f"not {digest[:16]}…")  # fmt: skip
        return signed

    def add_revocation(self, digest: str, token: str) -> str:
        """Store a revocation of the contract under ``digest`` (checked against it first); the blob it lies in.

        A party that already revoked has nothing more to revoke: what lies under its name stays (if that is not
        a valid revocation, the contract is refused all the same: an unverifiable revocation denies).

        Raises:
            RevocationInvalid: ``token`` is not a valid revocation of this contract.
        """
        contract = self.read(digest).contract
        revocation = verify_revocation(contract, token, source="given")
        blob = f"{digest}/{REVOCATIONS}{revocation.party}.jws"
        body = token.encode()
        try:
            self._store.upload_stream(self._container, blob, io.BytesIO(body), length=len(body))
        except BlobAlreadyExists:
            pass
        return blob

    def revocations(self, digest: str) -> dict[str, str]:
        """Every blob under the contract's ``revocations/``, by name: what
        :func:`~securetrain.core.governance.in_force.verify_contract` checks (unverified here).

        Raises:
            StoredContractInvalid: more blobs than a contract has parties, or one too large to be a revocation.
        """
        prefix = f"{_digest(digest)}/{REVOCATIONS}"
        found: dict[str, str] = {}
        for info in self._store.list_blobs(self._container, prefix):
            if len(found) == MAX_REVOCATIONS:
                raise StoredContractInvalid(f"{self._container}/{prefix} holds more than {MAX_REVOCATIONS} blobs")
            # Not ASCII is not a JWS: kept as replacement characters, so the check refuses it by name.
            found[f"{self._container}/{info.name}"] = self._read(info.name, MAX_REVOCATION_BYTES).decode("ascii", "replace")
        return found
