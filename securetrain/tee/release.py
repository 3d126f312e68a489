"""Secure Key Release of the job's KEK: the TEE presents its token, Key Vault releases the key wrapped to it.

The real ``azure-keyvault-keys`` client asks for the release (``release_key``), and
:func:`securetrain.core.skr.open_release_response`, the relying party's half of Secure Key Release, checks the
signed response and unwraps it with the TEE key. A refusal (400, 401, 403: the policy condition that failed)
is :class:`KeyReleaseDenied`, which fails the job with the vault's reason: docs/trainer.md ("Secure Key Release").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from azure.core.credentials import TokenCredential
from azure.keyvault.keys import KeyVaultKeyIdentifier
from cryptography import x509

from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.http import AzureErrors
from securetrain.core.keyvault import key_client
from securetrain.core.sealed import KekPrivateKey
from securetrain.core.skr import open_release_response
from securetrain.tee.attest import TeeKey
from securetrain.core.contracts.training import JobKeys

log = logging.getLogger(__name__)


class KeyReleaseDenied(SecurityViolation):
    """Key Vault refused to release the KEK (its release policy, or our identity); the message is its reason."""


class KeyVaultUnreachable(SecuretrainError):
    """Key Vault could not be reached after the client's bounded retries, or failed to answer."""


class KeyReleaseUnavailable(ConfigurationError):
    """This agent cannot perform Secure Key Release: a component it needs is missing."""


#: A refusal of the token (400) or of the identity (401/403) is :class:`KeyReleaseDenied`; any other failure
#: but a TLS one :class:`KeyVaultUnreachable`.
_RELEASE_ERRORS = AzureErrors(
    "Key Vault", access_denied=KeyReleaseDenied, failed=KeyVaultUnreachable, refusals=frozenset({400, 401, 403}),
    when_denied="the release policy or the identity's role does not allow this TEE the key",
)  # fmt: skip


@dataclass(frozen=True)
class ReleasedKek:
    """One KEK version released to this TEE: its versioned id, its private half, its creation time (Unix
    seconds, as the vault signed it in the release response; None if the response does not say)."""

    kek_id: str
    private: KekPrivateKey
    created: int | None

    def __repr__(self) -> str:
        return f"ReleasedKek(kek_id={self.kek_id!r}, created={self.created})"  # never the key material


class VaultKeyReleaser:
    """Releases KEKs from the vault named in each key id, authenticating with ``credential``.

    ``credential`` None is an agent started without a Key Vault identity: every release fails, saying so.
    ``ca_bundle`` is the CA the vault's TLS certificate must chain to (None: the system's store);
    ``trusted_roots`` are the certificates the release response's signature must chain to (the local
    vault signs with a certificate from the stack CA).
    """

    def __init__(
        self, credential: TokenCredential | None, *, ca_bundle: Path | None, trusted_roots: Sequence[x509.Certificate]
    ) -> None:
        self._credential = credential
        self._ca_bundle = ca_bundle
        self._trusted_roots = trusted_roots

    def release(self, kek_id: str, token: ValidatedToken, tee_key: TeeKey) -> JobKeys:
        """Have ``kek_id`` released to ``tee_key`` on the strength of ``token``; the keys of the job."""
        return JobKeys.from_released(self.release_version(kek_id, token, tee_key).private, kek_id)

    def release_version(self, kek_id: str, token: ValidatedToken, tee_key: TeeKey) -> ReleasedKek:
        """Have the KEK version ``kek_id`` released to ``tee_key`` on the strength of ``token``."""
        if self._credential is None:
            raise KeyReleaseUnavailable(
                "this agent was started without a Key Vault identity, so it cannot ask for the KEK; "
                "start it with the identity the release policy expects"
            )
        key_id = KeyVaultKeyIdentifier(kek_id)
        if not key_id.version:
            raise KeyReleaseDenied(f"KEK id {kek_id} names no version: a release must name the exact key version")
        client = key_client(key_id.vault_url, self._credential, ca_bundle=self._ca_bundle)
        with _RELEASE_ERRORS.translated("release", kek_id), client:
            released = client.release_key(key_id.name, token.raw, version=key_id.version)
        key = open_release_response(released.value, tee_key.private_key, self._trusted_roots, expected_key_id=kek_id)
        log.info("KEK %s released to TEE key %s", kek_id, tee_key.kid)
        return ReleasedKek(kek_id, KekPrivateKey(key.private_key), key.created)
