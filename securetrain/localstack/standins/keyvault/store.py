"""The vault's keys on disk: versions, attributes, release policies, soft-delete; private parts encrypted.

One JSON file per key name under ``<data dir>/keys/<name>.json``, replaced atomically on every change,
so a crash leaves either the old or the new state of a key. The private key of each version is stored
as PKCS#8 DER sealed with AES-256-GCM under the vault's master key (a 32-byte file, 0600, in the
stack's secrets directory); the associated data binds the ciphertext to ``name/version``, so private
material cannot be swapped between versions by editing the files.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.fsutil import atomic_output

KEY_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
KEY_VERSION = re.compile(r"[0-9a-f]{32}")
RSA_KEY_SIZES = (2048, 3072, 4096)
RECOVERABLE_DAYS = 90
_MASTER_KEY_BYTES = 32
_NONCE_BYTES = 12


class MasterKeyInvalid(SecurityViolation):
    """The master key file is missing its protection or its content, or does not open a stored key."""


def load_or_create_master_key(path: Path) -> bytes:
    """The 32-byte master key in ``path``, made on first use (0600); refused if others can read it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with atomic_output(path, mode=0o600) as out:
            out.write(os.urandom(_MASTER_KEY_BYTES))
    if path.stat().st_mode & 0o077:
        raise MasterKeyInvalid(f"{path} is readable by other users: chmod 600 it (it protects every vault key)")
    key = path.read_bytes()
    if len(key) != _MASTER_KEY_BYTES:
        raise MasterKeyInvalid(f"{path} holds {len(key)} bytes, not a {_MASTER_KEY_BYTES}-byte master key")
    return key


@dataclass(frozen=True)
class KeyVersion:
    """One version of a key: its public half, attributes and (sealed) private half."""

    name: str
    version: str
    kty: str
    key_ops: tuple[str, ...]
    public_numbers: rsa.RSAPublicNumbers
    sealed_private: bytes
    created: int
    updated: int
    enabled: bool = True
    not_before: int | None = None
    expires: int | None = None
    exportable: bool = False
    release_policy: bytes | None = None
    policy_immutable: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def key_size(self) -> int:
        return self.public_numbers.n.bit_length()

    def usable_now(self) -> str | None:
        """None when the key may be used now; else why not (disabled, not yet valid, expired)."""
        now = time.time()
        if not self.enabled:
            return "the key is disabled"
        if self.not_before is not None and now < self.not_before:
            return "the key is not yet valid (nbf)"
        if self.expires is not None and now >= self.expires:
            return "the key has expired"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kty": self.kty,
            "key_ops": list(self.key_ops),
            "n": format(self.public_numbers.n, "x"),
            "e": self.public_numbers.e,
            "sealed_private": base64.b64encode(self.sealed_private).decode(),
            "created": self.created,
            "updated": self.updated,
            "enabled": self.enabled,
            "nbf": self.not_before,
            "exp": self.expires,
            "exportable": self.exportable,
            "release_policy": None if self.release_policy is None else self.release_policy.decode(),
            "policy_immutable": self.policy_immutable,
            "tags": dict(self.tags),
        }

    @classmethod
    def from_json(cls, name: str, doc: Mapping[str, Any]) -> KeyVersion:
        return cls(
            name=name,
            version=doc["version"],
            kty=doc["kty"],
            key_ops=tuple(doc["key_ops"]),
            public_numbers=rsa.RSAPublicNumbers(doc["e"], int(doc["n"], 16)),
            sealed_private=base64.b64decode(doc["sealed_private"]),
            created=doc["created"],
            updated=doc["updated"],
            enabled=doc["enabled"],
            not_before=doc["nbf"],
            expires=doc["exp"],
            exportable=doc["exportable"],
            release_policy=None if doc["release_policy"] is None else doc["release_policy"].encode(),
            policy_immutable=doc["policy_immutable"],
            tags=doc["tags"],
        )


@dataclass(frozen=True)
class StoredKey:
    """A key name: its versions, oldest first, and its deletion state."""

    name: str
    versions: tuple[KeyVersion, ...]
    deleted_at: int | None = None

    @property
    def latest(self) -> KeyVersion:
        return self.versions[-1]

    def version(self, version: str) -> KeyVersion | None:
        """``version``, or the latest for ``""``; None if there is no such version."""
        if not version:
            return self.latest
        return next((v for v in self.versions if v.version == version), None)


@dataclass(frozen=True)
class KeySpec:
    """What a create or rotate asks for."""

    kty: str
    key_size: int
    public_exponent: int
    key_ops: tuple[str, ...]
    enabled: bool
    not_before: int | None
    expires: int | None
    exportable: bool
    release_policy: bytes | None
    policy_immutable: bool
    tags: Mapping[str, str]


class KeyStore:
    """Keys under ``directory``; thread-safe; every change is persisted before it is reported."""

    def __init__(self, directory: Path, master_key: bytes) -> None:
        self._dir = directory / "keys"
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._aead = AESGCM(master_key)
        self._lock = threading.RLock()

    def _path(self, name: str) -> Path:
        if not KEY_NAME.fullmatch(name):
            raise ConfigurationError(f"{name!r} is not a key name")
        return self._dir / f"{name}.json"

    def load(self, name: str) -> StoredKey | None:
        """The key ``name`` (deleted or not), or None."""
        path = self._path(name)
        with self._lock:
            if not path.exists():
                return None
            doc = json.loads(path.read_text())
        return StoredKey(name, tuple(KeyVersion.from_json(name, v) for v in doc["versions"]), doc["deleted_at"])

    def save(self, key: StoredKey) -> None:
        doc = {"name": key.name, "deleted_at": key.deleted_at, "versions": [v.to_json() for v in key.versions]}
        with self._lock, atomic_output(self._path(key.name), mode=0o600) as out:
            out.write(json.dumps(doc, indent=1).encode())

    def remove(self, name: str) -> None:
        with self._lock:
            self._path(name).unlink(missing_ok=True)

    def names(self) -> Iterator[str]:
        for path in sorted(self._dir.glob("*.json")):
            yield path.stem

    def new_version(self, name: str, spec: KeySpec) -> KeyVersion:
        """Generate a key pair per ``spec`` as a new version of ``name`` (not yet saved)."""
        private_key = rsa.generate_private_key(public_exponent=spec.public_exponent, key_size=spec.key_size)
        version = uuid.uuid4().hex
        der = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, der, f"{name}/{version}".encode())
        now = int(time.time())
        return KeyVersion(
            name=name,
            version=version,
            kty=spec.kty,
            key_ops=spec.key_ops,
            public_numbers=private_key.public_key().public_numbers(),
            sealed_private=sealed,
            created=now,
            updated=now,
            enabled=spec.enabled,
            not_before=spec.not_before,
            expires=spec.expires,
            exportable=spec.exportable,
            release_policy=spec.release_policy,
            policy_immutable=spec.policy_immutable,
            tags=spec.tags,
        )

    def private_key_der(self, version: KeyVersion) -> bytes:
        """The private key of ``version`` as PKCS#8 DER, decrypted under the master key."""
        nonce, ciphertext = version.sealed_private[:_NONCE_BYTES], version.sealed_private[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, f"{version.name}/{version.version}".encode())
        except InvalidTag:  # the master key is another one, or the file was altered
            raise MasterKeyInvalid(
                f"the private part of {version.name}/{version.version} does not open with the master key"
            ) from None

    def private_key(self, version: KeyVersion) -> rsa.RSAPrivateKey:
        """The private key of ``version``, for decrypt and unwrap."""
        # The DER was generated here and is authenticated by AES-GCM, so OpenSSL's RSA consistency check
        # (about 100 ms for a 3072-bit key) proves nothing new.
        key = serialization.load_der_private_key(
            self.private_key_der(version), password=None, unsafe_skip_rsa_key_validation=True
        )
        assert isinstance(key, rsa.RSAPrivateKey)  # only RSA keys are ever stored
        return key

    @staticmethod
    def updated(version: KeyVersion, **changes: Any) -> KeyVersion:
        """``version`` with ``changes`` and a new ``updated`` time."""
        return replace(version, updated=int(time.time()), **changes)
