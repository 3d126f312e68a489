"""The data owners this TEE trusts: their Ed25519 public keys, pinned in the agent's measured configuration.

A data owner signs what only the owner may decide (which sealed shards make up a dataset version, which
recipients may receive a model): the TEE checks those signatures against the keys it was started with,
never against a key that arrives with a request. The keys are part of the workload measurement
(:func:`securetrain.tee.workload.manifest`), so a TEE started with another owner's key has another measurement,
and the owner's release policy does not release the KEK to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securetrain.core import signed_documents
from securetrain.core.signed_documents import SignatureInvalid, load_public_key

#: What a data owner's key is called in errors.
OWNER_KEY = "the data owner key"


class DataOwnerKeys:
    """The pinned owner keys by key id (SHA-256 of the raw public key)."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {signed_documents.key_id(key): key for key in keys}

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> DataOwnerKeys:
        return cls(load_public_key(path, OWNER_KEY) for path in paths)

    @property
    def key_ids(self) -> list[str]:
        """The pinned keys' ids, sorted: what the workload measurement records."""
        return sorted(self._keys)

    def verify(self, document: Mapping[str, Any], *, what: str) -> str:
        """The key id of the pinned owner whose valid signature ``document`` carries.

        Raises:
            SignatureInvalid: no pinned owner signed it, or a signature by a pinned owner does not verify.
        """
        if not self._keys:
            raise SignatureInvalid(f"this TEE trusts no data owner key, so it cannot accept {what}")
        signers = {entry.get("key_id") for entry in document.get("signatures", []) if isinstance(entry, Mapping)}
        for key_id in sorted(signers & self._keys.keys()):
            signed_documents.verify(document, self._keys[key_id], what=what)
            return key_id
        raise SignatureInvalid(f"{what} is not signed by a data owner this TEE trusts ({', '.join(k[:16] + '…' for k in self.key_ids)})")
