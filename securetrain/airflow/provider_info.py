"""Registers securetrain's connection types with Airflow (entry point ``apache_airflow_provider``).

With it installed, the UI's connection form offers "securetrain Key Vault", "securetrain attestation" and
"securetrain confidential VM", with their fields labelled. Storage uses the Azure provider's ``wasb`` type.
"""

from __future__ import annotations

from typing import Any

_CA_BUNDLE = {"label": "CA bundle", "schema": {"type": ["string", "null"]},
              "description": "PEM file of the CAs to trust instead of the system's (the local stack's CA)"}  # fmt: skip


def _text_field(label: str, description: str) -> dict[str, Any]:
    return {"label": label, "schema": {"type": ["string", "null"]}, "description": description}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "securetrain",
        "name": "securetrain",
        "description": "Confidential training: Key Vault Secure Key Release, attestation, confidential VMs.",
        "versions": ["0.1.0"],
        "connection-types": [
            {
                "hook-class-name": "securetrain.airflow.hooks.keyvault.KeyVaultHook",
                "hook-name": "securetrain Key Vault",
                "connection-type": "securetrain_keyvault",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Vault URL", "login": "Client ID", "password": "Client secret"},
                    "placeholders": {"host": "https://my-vault.vault.azure.net",
                                     "login": "a service principal's client id; empty for a managed or workload identity"},
                },
                "conn-fields": {
                    "ca_bundle": _CA_BUNDLE,
                    "tenant_id": _text_field("Tenant ID", "the service principal's tenant"),
                    "managed_identity_client_id": _text_field("Managed identity client ID", "a user-assigned managed identity"),
                    "workload_identity_tenant_id": _text_field("Workload identity tenant ID", "for a workload identity"),
                    "authority_host": _text_field("Authority host", "Entra ID of another cloud (default: the public cloud's)"),
                    "disable_instance_discovery": {"label": "Disable instance discovery", "schema": {"type": ["boolean", "null"]},
                                                   "description": "only for an authority that is not a Microsoft cloud"},
                },
            },
            {
                "hook-class-name": "securetrain.airflow.hooks.attestation.AttestationHook",
                "hook-name": "securetrain attestation",
                "connection-type": "securetrain_attestation",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "password"],
                    "relabeling": {"host": "Attestation provider URL"},
                    "placeholders": {"host": "https://myprovider.weu.attest.azure.net"},
                },
                "conn-fields": {"ca_bundle": _CA_BUNDLE},
            },
            {
                "hook-class-name": "securetrain.airflow.hooks.cvm.ConfidentialVmHook",
                "hook-name": "securetrain confidential VM",
                "connection-type": "securetrain_cvm",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "password"],
                    "relabeling": {"host": "Trainer agent URL"},
                    "placeholders": {"host": "https://10.0.0.4:8443"},
                },
                "conn-fields": {
                    "backend": {"label": "Backend", "schema": {"type": "string", "enum": ["local", "azure"]}},
                    "ca_bundle": _CA_BUNDLE,
                    "client_cert": {"label": "Client certificate (PEM file)", "schema": {"type": ["string", "null"]}},
                    "client_key": {"label": "Client key (PEM file)", "schema": {"type": ["string", "null"]}},
                    "azure_conn_id": {"label": "Azure connection (azure backend)", "schema": {"type": ["string", "null"]}},
                    "resource_group": {"label": "Resource group (azure backend)", "schema": {"type": ["string", "null"]}},
                    "vm_name": {"label": "VM name (azure backend)", "schema": {"type": ["string", "null"]}},
                },
            },
        ],
    }
