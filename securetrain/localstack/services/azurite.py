"""Azurite, Microsoft's Blob Storage emulator, as a stack service.

Its blob service only, over HTTPS with a certificate from the stack CA, with a generated account key instead of
the emulator's published one, and Entra bearer tokens accepted beside the key (``--oauth basic``). Why each
option and what it means for the tests: docs/local-stack.md ("Azurite", "Blob storage access").
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
from collections.abc import Mapping, Sequence

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient

from securetrain.localstack.errors import ToolNotInstalled
from securetrain.localstack.layout import repo_root, write_file
from securetrain.localstack.service import HEALTH_TIMEOUT_S, Service, ServiceContext, ServiceUnhealthy

ACCOUNT_NAME = "devstoreaccount1"
_KEY_FILE = "azurite-account-key"


def account_key(context: ServiceContext) -> str:
    """The stack's Azurite account key (base64), generated on first use and kept 0600 in the state dir."""
    path = context.layout.secrets_dir / _KEY_FILE
    if not path.exists():
        write_file(path, base64.b64encode(secrets.token_bytes(64)), mode=0o600)
    return path.read_text().strip()


def blob_endpoint(context: ServiceContext) -> str:
    """The account URL clients use: path-style, as for every emulator on an IP address."""
    return f"{context.base_url}/{ACCOUNT_NAME}"


def _argv(context: ServiceContext) -> Sequence[str]:
    script = repo_root() / "node_modules" / ".bin" / "azurite-blob"
    if not script.exists():
        raise ToolNotInstalled(
            f"Azurite is not installed ({script} is missing): run `make setup` (or `npm ci`) in {repo_root()}"
        )
    node = shutil.which("node")
    if node is None:
        raise ToolNotInstalled("Node.js is not on PATH: install Node.js 20 or newer (Azurite runs on it)")
    context.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return [
        node,
        str(script),
        "--blobHost", context.host,
        "--blobPort", str(context.port),
        "--cert", str(context.cert_path),
        "--key", str(context.key_path),
        "--location", str(context.data_dir),
        # Accept Entra bearer tokens as well as shared keys, so the TEE and the command line reach storage as
        # their identities, as on Azure. Azurite's "basic" check: lifetime, issuer, audience; no signature.
        "--oauth", "basic",
        "--disableTelemetry",
        "--skipApiVersionCheck",
    ]  # fmt: skip


def _environment(context: ServiceContext) -> Mapping[str, str]:
    return {"AZURITE_ACCOUNTS": f"{ACCOUNT_NAME}:{account_key(context)}"}


def _health_check(context: ServiceContext) -> None:
    # An authenticated call: proves TLS with the stack's certificate, the generated key in effect and the
    # blob service answering. No retries: the launcher polls.
    client = BlobServiceClient(
        blob_endpoint(context),
        credential=AzureNamedKeyCredential(ACCOUNT_NAME, account_key(context)),
        connection_verify=str(context.ca_bundle),
        retry_total=0,
        connection_timeout=HEALTH_TIMEOUT_S,
        read_timeout=HEALTH_TIMEOUT_S,
    )
    try:
        with client:
            client.get_service_properties()
    except AzureError as exc:
        raise ServiceUnhealthy.because(exc) from exc


def _exports(context: ServiceContext) -> Mapping[str, str]:
    endpoint, key = blob_endpoint(context), account_key(context)
    # The Airflow connection in the JSON form Airflow reads from AIRFLOW_CONN_* variables, for the Azure
    # provider's `wasb` type: WasbHook builds BlobServiceClient(account_url=host, credential=password,
    # **extra), so the CA bundle goes in extra as connection_verify.
    airflow_connection = {
        "conn_type": "wasb",
        "host": endpoint,
        "login": ACCOUNT_NAME,
        "password": key,
        "extra": {"connection_verify": str(context.ca_bundle)},
    }
    return {
        "SECURETRAIN_BLOB_ENDPOINT": endpoint,
        "SECURETRAIN_BLOB_ACCOUNT_NAME": ACCOUNT_NAME,
        "SECURETRAIN_BLOB_ACCOUNT_KEY": key,
        "AIRFLOW_CONN_SECURETRAIN_STORAGE": json.dumps(airflow_connection, sort_keys=True),
    }


AZURITE = Service(
    name="azurite",
    description="Azure Blob Storage emulator (Azurite, blob service only)",
    default_port=10000,
    argv=_argv,
    health_check=_health_check,
    environment=_environment,
    exports=_exports,
)
