"""``POST /v1/rewraps``: KEK rotation's rewrap, inside the TEE, the only place a data key is ever unwrapped.

Airflow names the new KEK version, the containers and a nonce; everything else the TEE decides and checks
itself. The request is validated before any nonce is spent; the TEE attests with Airflow's nonce, has the new
version released to it, and rewraps each blob of an older version of the same key with that version released
too, but only if Key Vault says it is not newer than the target (no rewrap backwards); it answers with
:func:`securetrain.core.rotation.rewrap_statement` signed with its attested key. The steps in full, and what
happens to a blob it cannot rewrap: docs/keys.md ("Rotation"). Nothing secret leaves: the answer names blobs
and key versions only.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, PlainValidator

from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.core.contracts.base import Contract, DocumentInvalid, matching, refusal
from securetrain.core.contracts.job_spec import CONTAINER, Nonce
from securetrain.core.errors import SecurityViolation
from securetrain.core.keyvault import VersionUnavailable, rewrap_blobs
from securetrain.core.model_provenance import sign_statement
from securetrain.core.rotation import rewrap_statement, sealed_blobs
from securetrain.core.sealed import KekPublicKey
from securetrain.core.sealed.header import KeyWrap
from securetrain.core.storage import BlobStore
from securetrain.tee.attest import Attester, TeeKey
from securetrain.tee.release import KeyReleaseDenied, ReleasedKek, VaultKeyReleaser

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 << 10
MAX_CONTAINERS = 16
KeyVersionId = matching(r"https://[^/?#@\s]+/keys/[0-9A-Za-z-]{1,127}/[0-9a-f]{32}",
                        "A versioned Key Vault key id, https://VAULT/keys/NAME/VERSION (VERSION: 32 lowercase hex digits).")


class RewrapRequestInvalid(DocumentInvalid):
    """``POST /v1/rewraps`` got a body it does not accept; ``field`` names the field at fault."""

    document = "rewrap request"


class RewrapRefused(SecurityViolation):
    """The TEE will not rewrap to the version asked for: a version it would replace is newer, or Key Vault
    does not say when a version was created."""


def _port_in_range(url: str) -> str:
    try:
        urlsplit(url).port  # urllib raises ValueError for a port outside 0-65535
    except ValueError:
        raise refusal("names a port outside 0-65535") from None
    return url


def _containers(names: Any) -> tuple[str, ...]:
    if (
        not isinstance(names, list) or not 1 <= len(names) <= MAX_CONTAINERS
        or not all(isinstance(name, str) and re.fullmatch(CONTAINER, name) for name in names)
        or len(set(names)) != len(names)
    ):  # fmt: skip
        raise refusal(f"must be a list of 1-{MAX_CONTAINERS} distinct blob container names (3-63 lower-case letters, "
                      "digits and hyphens)")  # fmt: skip
    return tuple(names)


class RewrapRequest(Contract):
    """``POST /v1/rewraps``' body: rewrap every sealed blob of ``containers`` sealed for an older version of
    ``kek_id``'s key to it."""

    kek_id: Annotated[KeyVersionId, AfterValidator(_port_in_range)]
    containers: Annotated[tuple[str, ...], PlainValidator(_containers)]
    nonce: Nonce

    invalid = RewrapRequestInvalid


class _ReleasedVersions:
    """The versions of one KEK released to this rewrap's TEE key, each once; opens a header's data key."""

    def __init__(self, releaser: VaultKeyReleaser, token: ValidatedToken, tee_key: TeeKey, target: str) -> None:
        self._releaser, self._token, self._tee_key = releaser, token, tee_key
        self._versions: dict[str, ReleasedKek] = {}
        self._refused: dict[str, str] = {}  # version -> Key Vault's reason, asked once
        self.target = self._release(target)
        if self.target.created is None:
            raise RewrapRefused(f"Key Vault's release of {target} does not say when it was created: cannot tell which "
                                "versions are older, so nothing is rewrapped to it")  # fmt: skip

    def _release(self, kek_id: str) -> ReleasedKek:
        if kek_id not in self._versions:
            self._versions[kek_id] = self._releaser.release_version(kek_id, self._token, self._tee_key)
        return self._versions[kek_id]

    @property
    def released(self) -> list[str]:
        return list(self._versions)

    def unwrap(self, key: KeyWrap) -> bytes:
        """The data key ``key`` wraps, unwrapped with the released version it names (same key as the target).

        Raises :class:`VersionUnavailable` when Key Vault refuses to release that version to this TEE: the
        blob stays as it is (no approved TEE opens it; its data owner re-seals or deletes it)."""
        if key.kek_id in self._refused:
            raise VersionUnavailable(self._refused[key.kek_id])
        try:
            version = self._release(key.kek_id)
        except KeyReleaseDenied as exc:
            self._refused[key.kek_id] = f"Key Vault does not release {key.kek_id} to this TEE: {exc}"
            raise VersionUnavailable(self._refused[key.kek_id]) from None
        target_created = self.target.created
        assert target_created is not None  # checked when the target was released
        if version.created is None or version.created > target_created:
            raise RewrapRefused(
                f"{key.kek_id} was created after {self.target.kek_id} (or Key Vault does not say when): the TEE "
                "rewraps data keys to a newer version only; rotate to the latest version"
            )
        return version.private.unwrap(key.wrapped_dek, kek_id=key.kek_id, kek_thumbprint=key.kek_thumbprint)


def run_rewrap(
    request: RewrapRequest, tee_key: TeeKey, attester: Attester, releaser: VaultKeyReleaser, store: BlobStore
) -> dict[str, Any]:
    """Rewrap as :mod:`this module <securetrain.tee.agent.rewrap>` describes, attested with ``tee_key`` (the
    rewrap's own fresh key); the signed answer."""
    token = attester.attest(tee_key, request.nonce)
    versions = _ReleasedVersions(releaser, token, tee_key, request.kek_id)
    new_kek = KekPublicKey(request.kek_id, versions.target.private.private_key.public_key())
    report = rewrap_blobs(sealed_blobs(store, request.containers), new_kek, versions.unwrap)
    statement = rewrap_statement(report, nonce=request.nonce, containers=request.containers,
                                 released_versions=versions.released)  # fmt: skip
    log.info("rewrap to %s: %d rewrapped, %d already current, %d refused, %d unreleasable, %d changed meanwhile",
             request.kek_id, len(report.rewrapped), len(report.already_current), len(report.refused),
             len(report.unreleasable), len(report.changed_meanwhile))  # fmt: skip
    return {
        "statement": statement,
        "tee_signature": sign_statement(tee_key.private_key, statement),
        "attestation_token": token.raw,
    }
