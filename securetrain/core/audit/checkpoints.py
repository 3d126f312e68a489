"""Signed checkpoints of the audit chain's head, the audit signing key, and the pin of its public key.

A checkpoint says "entry ``seq`` of this log hashes to ``head_hash``", signed with the pipeline's Ed25519
audit key; its format, why the signature is hex, and where the key belongs in production are in
docs/audit.md ("Checkpoints: the signed head").
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securetrain.core import signed_documents
from securetrain.core.audit.errors import AuditKeyError, AuditKeyNotPinned, AuditKeyUntrusted, CheckpointInvalid
from securetrain.core.audit.events import rfc3339_utc

_HASH = re.compile(r"[0-9a-f]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")

#: The deployment setting that pins the audit public key for verification: its :func:`key_fingerprint`.
PINNED_KEY_VARIABLE = "SECURETRAIN_AUDIT_KEY_FINGERPRINT"
def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 audit signing key in the PEM file ``path``, created (mode 0600) if it does not exist.

    Creation is exclusive, so two processes starting at once end up with the same key.

    Raises:
        AuditKeyError: the file is readable by other users, or is not an unencrypted Ed25519 PEM key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_signing_key(path)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 audit signing key in the PEM file ``path``.

    Raises:
        AuditKeyError: missing, readable by group or others, or not an unencrypted Ed25519 PEM key.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"cannot read the audit signing key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuditKeyError(
            f"the audit signing key {path} is accessible to other users (mode {stat.S_IMODE(mode):o}); "
            f"whoever reads it can forge checkpoints. Run `chmod 600 {path}` if it was never exposed, else "
            "replace it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise AuditKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{path} holds a {type(key).__name__}; the audit signing key is Ed25519")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of the public half of ``key``: what a verifier is given."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: names the key in messages, and pins it for verification.

    The same value that names a signer of a signed document (:func:`securetrain.core.signed_documents.key_id`).
    """
    return signed_documents.key_id(key)


def pinned_fingerprint(given: str | None, environ: Mapping[str, str]) -> str:
    """The pinned audit key's fingerprint: ``given`` (the command line), else the deployment setting
    :data:`PINNED_KEY_VARIABLE`.

    A verifier that took whatever key lies next to the log would accept a log re-signed with a key put
    there by whoever rewrote it; the pin is the verifier's own knowledge of which key signs checkpoints.

    Raises:
        AuditKeyNotPinned: neither names one, or it is not 64 hex digits.
    """
    value = given if given is not None else environ.get(PINNED_KEY_VARIABLE, "")
    if not value:
        raise AuditKeyNotPinned(
            f"no audit key is pinned: pass --audit-key-fingerprint SHA256HEX or set {PINNED_KEY_VARIABLE} to the "
            "SHA-256 of the deployment's audit public key (`securetrain audit fingerprint --public-key PEM` prints "
            "it). Verification does not trust a key found next to the log"
        )
    if not _HASH.fullmatch(value.lower()):
        raise AuditKeyNotPinned(f"the pinned audit key fingerprint {value!r} is not 64 hex digits (a SHA-256)")
    return value.lower()


def check_pinned(key: Ed25519PublicKey, fingerprint: str) -> None:
    """Raise :class:`AuditKeyUntrusted` unless ``key`` is the pinned one."""
    actual = key_fingerprint(key)
    if actual != fingerprint:
        raise AuditKeyUntrusted(
            f"the audit public key offered has fingerprint {actual}, not the pinned {fingerprint}: checkpoints "
            "signed with it prove nothing (a rewritten log can be re-signed with any key put beside it)"
        )


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that entry ``seq`` of the log hashes to ``head_hash``."""

    seq: int
    head_hash: str
    time: str
    signature: bytes

    def _body(self) -> bytes:
        return rfc8785.dumps({"head_hash": self.head_hash, "seq": self.seq, "time": self.time})

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, seq: int, head_hash: str) -> Checkpoint:
        """A checkpoint of head ``seq`` / ``head_hash`` made now and signed with ``key``."""
        time = rfc3339_utc(datetime.datetime.now(datetime.UTC))
        unsigned = cls(seq=seq, head_hash=head_hash, time=time, signature=b"")
        return cls(seq=seq, head_hash=head_hash, time=time, signature=key.sign(unsigned._body()))

    def to_line(self) -> bytes:
        """The stored form: one line of canonical JSON (without the newline the store adds)."""
        document = {
            "checkpoint": {"head_hash": self.head_hash, "seq": self.seq, "time": self.time},
            "signature": self.signature.hex(),
        }
        return rfc8785.dumps(document)

    @classmethod
    def parse(cls, line: bytes, number: int) -> Checkpoint:
        """Parse stored checkpoint ``line`` (without its newline), the ``number``-th (1-based, for messages).

        The signature is not checked here: see :meth:`verify`.

        Raises:
            CheckpointInvalid: not the canonical JSON of a checkpoint.
        """

        def malformed(why: str) -> CheckpointInvalid:
            return CheckpointInvalid(
                None, f"checkpoint line {number} is malformed ({why}): the checkpoint log was edited"
            )

        try:
            document = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise malformed("not JSON") from None
        if not isinstance(document, dict) or sorted(document) != ["checkpoint", "signature"]:
            raise malformed("not an object with exactly 'checkpoint' and 'signature'")
        body, signature = document["checkpoint"], document["signature"]
        if not isinstance(body, dict) or sorted(body) != ["head_hash", "seq", "time"]:
            raise malformed("'checkpoint' is not an object with exactly head_hash, seq and time")
        seq, head_hash, time = body["seq"], body["head_hash"], body["time"]
        if type(seq) is not int or seq < 0:
            raise malformed(f"seq {seq!r} is not a non-negative integer")
        if not isinstance(head_hash, str) or not _HASH.fullmatch(head_hash):
            raise malformed("head_hash is not 64 lowercase hex digits")
        if not isinstance(time, str) or not _TIME.fullmatch(time):
            raise malformed(f"time {time!r} is not RFC 3339 UTC")
        if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
            raise malformed("signature is not 128 lowercase hex digits")
        if rfc8785.dumps(document) != line:
            raise malformed("not in canonical RFC 8785 form")
        return cls(seq=seq, head_hash=head_hash, time=time, signature=bytes.fromhex(signature))

    def verify(self, key: Ed25519PublicKey) -> None:
        """Check the signature with the audit public key.

        Raises:
            CheckpointInvalid: the signature does not verify (the checkpoint was edited or signed by another key).
        """
        try:
            key.verify(self.signature, self._body())
        except InvalidSignature:
            raise CheckpointInvalid(
                self.seq,
                f"the checkpoint of seq {self.seq} (made {self.time}) has a signature that does not verify with "
                f"the audit public key {key_fingerprint(key)[:16]}: it was edited, or signed by another key",
            ) from None
