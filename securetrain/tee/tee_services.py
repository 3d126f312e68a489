"""The TEE's clients of the attestation service and Key Vault, built from its settings.

One place that turns :class:`~securetrain.tee.settings.TeeSettings` into an
:class:`~securetrain.tee.attest.Attester` and a :class:`~securetrain.tee.release.VaultKeyReleaser`, for the agent
and for anything else that walks the TEE's path (tests that open a sealed model as the TEE would). Storage is
:meth:`TeeSettings.blob_store`: a training worker needs it and none of these.
"""

from __future__ import annotations

from cryptography import x509

from securetrain.core.attestation.maa import AttestationServiceClient
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator
from securetrain.core.errors import ConfigurationError
from securetrain.tee.attest import Attester
from securetrain.tee.evidence import EvidenceProvider
from securetrain.tee.evidence.azure_cvm import AzureCvmProvider
from securetrain.tee.evidence.nvidia_gpu import GpuEvidenceProvider
from securetrain.tee.gpu_attestation import GpuAttestationClient, GpuAttester
from securetrain.tee.release import VaultKeyReleaser
from securetrain.tee.settings import TeeSettings


def attester(
    settings: TeeSettings, evidence: EvidenceProvider | AzureCvmProvider, gpu_evidence: GpuEvidenceProvider | None = None
) -> Attester:
    """An attester that sends ``evidence`` to the attestation service and validates the tokens it returns; and,
    where the settings require a GPU, attests ``gpu_evidence`` with the GPU attestation service they name."""
    endpoint = settings.url("attestation_endpoint")
    return Attester(
        evidence,
        AttestationServiceClient(endpoint, verify=settings.tls_verify),
        TokenValidator(AuthorityKeys(endpoint, verify=settings.tls_verify)),
        gpu_attester(settings, gpu_evidence),
    )


def gpu_attester(settings: TeeSettings, gpu_evidence: GpuEvidenceProvider | None) -> GpuAttester | None:
    """The GPU attester the settings require (None where they require no GPU); a required GPU without evidence
    is a configuration error, never a TEE attested without it."""
    requirement = settings.gpu_requirement()
    if requirement is None:
        return None
    if gpu_evidence is None:
        raise ConfigurationError(f"${settings.variable('gpu')} is {settings.gpu!r}, but no GPU evidence provider was given")
    return GpuAttester(
        gpu_evidence,
        GpuAttestationClient(requirement.attestation_endpoint, verify=settings.tls_verify),
        TokenValidator(requirement.token_keys(settings.tls_verify)),
        requirement,
    )


def key_releaser(settings: TeeSettings) -> VaultKeyReleaser:
    """Secure Key Release as the TEE's managed identity; release responses must chain to the configured root."""
    roots = x509.load_pem_x509_certificates(settings.keyvault_release_root.read_bytes())
    return VaultKeyReleaser(settings.credential(), ca_bundle=settings.ca_bundle, trusted_roots=roots)
