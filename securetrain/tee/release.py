"""Secure Key Release of the job's KEK: the TEE presents its token, Key Vault releases the key wrapped to it.

The flow, with the real ``azure-keyvault-keys`` client (against Azure Key Vault / Managed HSM, or the
local stand-in)::

    KeyClient(vault_url, credential, connection_verify=CA, verify_challenge_resource=<off for loopback only>)
        .release_key(name, target=token, version=version)        -> {"value": JWS}
    securetrain.core.skr.open_release_response(JWS, TEE private key, trusted roots, expected_key_id=...)
        -> the KEK version's RSA private key (and its creation time, as the vault signed it)

The vault evaluates its release policy against the token's claims and answers 403 with the condition
that failed; that becomes :class:`KeyReleaseDenied`, which fails the job with the vault's reason. The
JWS is checked (signature chain to the trusted roots, the key it carries is the versioned KEK asked for,
the private key matches the public key it names; the signer is a TLS server certificate for the vault's
host) and unwrapped with the TEE key by :mod:`securetrain.core.skr`, the relying party's half of Secure Key
Release.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.keyvault.keys import KeyClient, KeyVaultKeyIdentifier
from cryptography import x509

from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.keyvault import challenge_resource_verified
from securetrain.core.sealed import KekPrivateKey
from securetrain.core.skr import open_release_response
from securetrain.tee.attest import TeeKey
from securetrain.core.contracts.training import JobKeys

log = logging.getLogger(__name__)


class KeyReleaseDenied(SecurityViolation):
    """Key Vault refused to release the KEK (its release policy, or our identity); the message is its reason."""


class KeyVaultUnreachable(SecuretrainError):
    """Key Vault could not be reached after the client's bounded retries."""


class KeyReleaseUnavailable(ConfigurationError):
    """This agent cannot perform Secure Key Release: a component it needs is missing."""


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
        client = KeyClient(
            key_id.vault_url,
            self._credential,  # type: ignore[arg-type]  # checked above
            connection_verify=str(self._ca_bundle) if self._ca_bundle else True,
            verify_challenge_resource=challenge_resource_verified(key_id.vault_url),
        )
        try:
            with client:
                released = client.release_key(key_id.name, token.raw, version=key_id.version)
        except ClientAuthenticationError as exc:
            raise KeyReleaseDenied(f"Key Vault refused this trainer's identity: {exc.message}") from None
        except HttpResponseError as exc:
            if exc.status_code in (400, 401, 403):
                raise KeyReleaseDenied(f"Key Vault refused to release {kek_id}: {exc.message}") from None
            raise KeyVaultUnreachable(f"Key Vault failed to release {kek_id}: {exc.message}") from None
        except ServiceRequestError as exc:
            raise KeyVaultUnreachable(f"cannot reach Key Vault at {key_id.vault_url}: {exc.message}") from None
        key = open_release_response(released.value, tee_key.private_key, self._trusted_roots, expected_key_id=kek_id)
        log.info("KEK %s released to TEE key %s", kek_id, tee_key.kid)
        return ReleasedKek(kek_id, KekPrivateKey(key.private_key), key.created)
