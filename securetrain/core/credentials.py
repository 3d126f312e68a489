"""The one place that turns identity settings into an azure-identity credential.

Both the settings of a process (:mod:`securetrain.core.settings`) and the Airflow connections of the hooks
describe an identity the same way, after the Azure provider's connections: a service principal (client id,
secret, tenant; optionally the authority host of another cloud), or nothing, in which case azure-identity's
``DefaultAzureCredential`` finds one (workload identity, a managed identity, optionally user-assigned, the
Azure CLI's sign-in). TLS to the authority is verified like every other connection of the process.
"""

from __future__ import annotations

from typing import Any, Protocol

from azure.core.credentials import TokenCredential

from securetrain.core.errors import ConfigurationError


class ClosableCredential(TokenCredential, Protocol):
    """An azure-identity credential: it keeps its connections to the identity endpoint open until it is closed
    (``with``, or :meth:`close`). A server being stopped waits for such a connection: a process that lives on
    after using one closes it."""

    def close(self) -> None: ...

    def __enter__(self) -> ClosableCredential: ...

    def __exit__(self, *exc_info: object) -> None: ...


def azure_credential(
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    tenant_id: str | None = None,
    authority_host: str | None = None,
    managed_identity_client_id: str | None = None,
    workload_identity_tenant_id: str | None = None,
    verify: str | bool = True,
    instance_discovery: bool = True,
) -> ClosableCredential:
    """A service principal's ``ClientSecretCredential`` when a secret is given, else ``DefaultAzureCredential``.

    ``verify``: the CA bundle TLS to Entra ID is checked against (True: the system's roots).
    ``instance_discovery``: whether azure-identity has Microsoft validate the authority; False only for an
    authority that is not a Microsoft cloud.
    """
    from azure.identity import ClientSecretCredential, DefaultAzureCredential  # noqa: PLC0415 - slow to import

    options: dict[str, Any] = {"connection_verify": verify, "disable_instance_discovery": not instance_discovery}
    if authority_host:
        options["authority"] = authority_host.rstrip("/")
    if client_secret:
        if not (client_id and tenant_id):
            raise ConfigurationError("a client secret needs its client id and tenant id")
        return ClientSecretCredential(tenant_id, client_id, client_secret, **options)
    if workload_identity_tenant_id:
        options["workload_identity_tenant_id"] = workload_identity_tenant_id
        options["additionally_allowed_tenants"] = [workload_identity_tenant_id]
    return DefaultAzureCredential(managed_identity_client_id=managed_identity_client_id, **options)
