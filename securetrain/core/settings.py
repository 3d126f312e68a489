"""Where the Azure services are and how a process trusts and authenticates to them: one typed object.

Every process outside Airflow (the TEE's agent, the command line) builds one :class:`ServiceSettings` (or a
subclass with its own fields) from its environment, and optionally from a dotenv file, with
pydantic-settings: ``SECURETRAIN_*`` names the endpoints and trust roots; the credential follows
azure-identity's own conventions, so the same variables configure it on Azure and locally:

- ``AZURE_CLIENT_ID`` + ``AZURE_TENANT_ID`` + ``AZURE_CLIENT_SECRET`` (and ``AZURE_AUTHORITY_HOST`` for
  another cloud or the local identity stand-in): a service principal, ``ClientSecretCredential``;
- otherwise ``DefaultAzureCredential``: workload identity (``AZURE_FEDERATED_TOKEN_FILE``), a managed
  identity (IMDS, or ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` where the host exposes them; a user-assigned
  one chosen by ``SECURETRAIN_MANAGED_IDENTITY_CLIENT_ID``), the Azure CLI's sign-in, ...

TLS: ``SECURETRAIN_CA_BUNDLE`` replaces the system's trusted roots for every connection (the local stack's
CA); unset, the system's roots are used and nothing else is needed. Settings are values, not clients: the
clients that use them (storage, Key Vault, the agent client) take what they need from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AliasChoices, Field, FilePath, SecretStr, UrlConstraints, ValidationError
from pydantic_core import Url
from pydantic_settings import BaseSettings, SettingsConfigDict

from securetrain.core.credentials import ClosableCredential, azure_credential
from securetrain.core.errors import ConfigurationError

#: An https URL; the project talks to every service over TLS only.
HttpsUrl = Annotated[Url, UrlConstraints(allowed_schemes=["https"], host_required=True)]


def _azure(name: str) -> Any:
    """A field read from azure-identity's own variable ``name`` (no ``SECURETRAIN_`` prefix)."""
    return Field(default=None, validation_alias=AliasChoices(name))


class Settings(BaseSettings):
    """A process's settings from ``SECURETRAIN_*`` variables (and a dotenv file), with errors that name them."""

    model_config = SettingsConfigDict(env_prefix="SECURETRAIN_", extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def load(cls, env_file: Path | None = None, **values: Any) -> Self:
        """Settings from the environment, over ``env_file`` (dotenv) when given; ``values`` override both.

        Raises:
            ConfigurationError: a value is malformed (names the variable) or ``env_file`` does not exist.
        """
        if env_file is not None and not env_file.is_file():
            raise ConfigurationError(f"settings file {env_file} does not exist")
        try:
            return cls(_env_file=env_file, **values)  # type: ignore[call-arg]  # pydantic-settings' init argument
        except ValidationError as exc:
            problems = "; ".join(f"{cls.variable(str(error['loc'][0]))}: {error['msg']}" for error in exc.errors())
            raise ConfigurationError(f"invalid settings: {problems}") from None

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        alias = cls.model_fields[field].validation_alias if field in cls.model_fields else None
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    def required(self, field: str) -> Any:
        """The value of ``field``, or a :class:`ConfigurationError` naming the variable that sets it."""
        value = getattr(self, field)
        if value is None:
            raise ConfigurationError(f"${self.variable(field)} is not set, and it is needed here")
        return value

    def url(self, field: str) -> str:
        """The required URL setting ``field`` as a string without a trailing slash."""
        return str(self.required(field)).rstrip("/")


class ServiceSettings(Settings):
    """The Azure services one process uses, the roots its TLS trusts and the identity it signs in as."""

    storage_account_url: HttpsUrl | None = None
    keyvault_url: HttpsUrl | None = None
    attestation_endpoint: HttpsUrl | None = None
    #: PEM roots to trust instead of the system's (the local stack's CA); None: the system's.
    ca_bundle: FilePath | None = None
    #: Whether azure-identity validates the authority against Microsoft's instance discovery. Off only for an
    #: authority that is not a Microsoft cloud (the local identity stand-in).
    entra_instance_discovery: bool = True
    #: A user-assigned managed identity to use (DefaultAzureCredential / ManagedIdentityCredential).
    managed_identity_client_id: str | None = None
    client_id: str | None = _azure("AZURE_CLIENT_ID")
    tenant_id: str | None = _azure("AZURE_TENANT_ID")
    client_secret: SecretStr | None = _azure("AZURE_CLIENT_SECRET")
    authority_host: HttpsUrl | None = _azure("AZURE_AUTHORITY_HOST")

    @property
    def tls_verify(self) -> str | bool:
        """What azure-core's ``connection_verify`` and requests' ``verify`` take: the CA bundle, or True."""
        return str(self.ca_bundle) if self.ca_bundle is not None else True

    def credential(self) -> ClosableCredential:
        """The process's identity: the service principal when a secret is configured, else DefaultAzureCredential."""
        return azure_credential(
            client_id=self.client_id,
            client_secret=self.client_secret.get_secret_value() if self.client_secret else None,
            tenant_id=self.tenant_id,
            authority_host=str(self.authority_host) if self.authority_host else None,
            managed_identity_client_id=self.managed_identity_client_id,
            verify=self.tls_verify,
            instance_discovery=self.entra_instance_discovery,
        )
