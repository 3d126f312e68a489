"""The TEE's settings: the services its agent uses, the roots it trusts, the managed identity it signs in as.

Read from the agent's environment (pydantic-settings): ``SECURETRAIN_STORAGE_ACCOUNT_URL``,
``SECURETRAIN_ATTESTATION_ENDPOINT``, ``SECURETRAIN_KEYVAULT_RELEASE_ROOT`` (the roots Key Vault's release
responses must chain to), optionally ``SECURETRAIN_CA_BUNDLE`` and ``SECURETRAIN_MANAGED_IDENTITY_CLIENT_ID``.
The Key Vault of each KEK is named by the KEK's id in the job, not here.

The TEE signs in only as a managed identity (``ManagedIdentityCredential``: IMDS on a confidential VM, or
``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` where the host exposes them): no secret that could sign in as the
TEE exists anywhere, so only the TEE's host can obtain its tokens, and Key Vault's release policy still
decides whether that host is an approved TEE.
"""

from __future__ import annotations

from azure.core.credentials import TokenCredential
from pydantic import FilePath

from securetrain.core.settings import HttpsUrl, ServiceSettings


class TeeSettings(ServiceSettings):
    """What the agent needs to attest, obtain keys and read and write blobs."""

    storage_account_url: HttpsUrl
    attestation_endpoint: HttpsUrl
    keyvault_release_root: FilePath

    def credential(self) -> TokenCredential:
        from azure.identity import ManagedIdentityCredential  # noqa: PLC0415 - heavy import

        return ManagedIdentityCredential(client_id=self.managed_identity_client_id, connection_verify=self.tls_verify)
