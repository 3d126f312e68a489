"""The TEE's clients of the attestation service and Key Vault, built from the stack's settings.

One place that turns ``stack.env``-style settings (``SECURETRAIN_ATTESTATION_ENDPOINT``,
``SECURETRAIN_CA_BUNDLE``, ``SECURETRAIN_KEYVAULT_RELEASE_ROOT``, the ``cvm`` identity) into an
:class:`~securetrain.tee.attest.Attester` and a :class:`~securetrain.tee.release.VaultKeyReleaser`, for the agent and for
anything else that walks the TEE's path on the local stack (the demo, tests that open a sealed model).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography import x509

from securetrain.core.attestation.maa import AttestationServiceClient
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator
from securetrain.core.errors import ConfigurationError
from securetrain.core.identity import LocalIdentityCredential
from securetrain.tee.attest import Attester
from securetrain.tee.evidence import EvidenceProvider
from securetrain.tee.release import VaultKeyReleaser


def setting(env: Mapping[str, str], name: str) -> str:
    """The setting ``name``, or a :class:`ConfigurationError` saying where settings come from."""
    value = env.get(name)
    if not value:
        raise ConfigurationError(f"${name} is not set: start with the local stack's settings (stack.env)")
    return value


def attester_from_env(env: Mapping[str, str], evidence: EvidenceProvider) -> Attester:
    """An attester that sends ``evidence`` to the attestation service and validates the tokens it returns."""
    endpoint, ca_bundle = setting(env, "SECURETRAIN_ATTESTATION_ENDPOINT"), setting(env, "SECURETRAIN_CA_BUNDLE")
    return Attester(
        evidence,
        AttestationServiceClient(endpoint, verify=ca_bundle),
        TokenValidator(AuthorityKeys(endpoint, verify=ca_bundle)),
    )


def releaser_from_env(env: Mapping[str, str]) -> VaultKeyReleaser:
    """Secure Key Release as the ``cvm`` identity; release responses must chain to the configured root."""
    # The vault signs release responses with a certificate under this root (the local stack's CA locally).
    roots = x509.load_pem_x509_certificates(Path(setting(env, "SECURETRAIN_KEYVAULT_RELEASE_ROOT")).read_bytes())
    return VaultKeyReleaser(
        LocalIdentityCredential.from_stack_env(env, "cvm"),
        ca_bundle=Path(setting(env, "SECURETRAIN_CA_BUNDLE")),
        trusted_roots=roots,
    )
