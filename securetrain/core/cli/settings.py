"""The command line's settings: the services, plus the agent's API and the approved release policy.

``securetrain --settings FILE COMMAND ...`` reads them from the dotenv FILE under the environment (which
wins); without ``--settings``, from the environment alone. See :mod:`securetrain.core.settings` for the
services and the credential; the local stack writes one such file per identity it has.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import FilePath

from securetrain.core.cvm_client import CvmClient
from securetrain.core.errors import ConfigurationError
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.settings import HttpsUrl, ServiceSettings


class CommandSettings(ServiceSettings):
    """What the commands use beyond the Azure services."""

    #: The TEE's agent and the client certificate its API accepts (mutual TLS).
    cvm_endpoint: HttpsUrl | None = None
    cvm_client_cert: FilePath | None = None
    cvm_client_key: FilePath | None = None
    #: The approved release policy (JSON) the verifying commands hold attestation tokens to.
    release_policy: FilePath | None = None

    def agent(self) -> CvmClient:
        """A client of the agent's API with the configured client certificate."""
        return CvmClient(self.url("cvm_endpoint"), cert=self.required("cvm_client_cert"),
                         key=self.required("cvm_client_key"), ca_bundle=self.ca_bundle)  # fmt: skip

    def approved_release_policy(self, explicit: Path | None = None) -> ReleasePolicy:
        """The release policy in ``explicit``, else ``$SECURETRAIN_RELEASE_POLICY``."""
        source = explicit or self.required("release_policy")
        try:
            return ReleasePolicy.parse(Path(source).read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"cannot read the release policy {source}: {exc.strerror}") from None
