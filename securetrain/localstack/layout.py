"""Where the local stack keeps its state: the state directory (``--state-dir``, ``$SECURETRAIN_STATE_DIR`` or
``.securetrain/`` at the repository root) and the files in it, as docs/local-stack.md ("State directory") lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import securetrain
from securetrain.core.fsutil import atomic_output

STATE_DIR_ENV = "SECURETRAIN_STATE_DIR"


def repo_root() -> Path:
    """The repository root: the directory that holds the ``securetrain`` package (and ``node_modules``)."""
    return Path(securetrain.__file__).resolve().parent.parent


def resolve_state_dir(explicit: Path | None = None) -> Path:
    """The state directory: ``explicit`` if given, else ``$SECURETRAIN_STATE_DIR``, else ``<repo>/.securetrain``."""
    if explicit is not None:
        return explicit.expanduser().resolve()
    from_environment = os.environ.get(STATE_DIR_ENV)
    if from_environment:
        return Path(from_environment).expanduser().resolve()
    return repo_root() / ".securetrain"


def write_file(path: Path, content: bytes, *, mode: int) -> None:
    """Write ``content`` to ``path`` atomically, with ``mode``; its directory is made (0700) if missing."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_output(path, mode=mode) as out:
        out.write(content)


@dataclass(frozen=True)
class StackLayout:
    """The paths inside one state directory (what each holds: docs/local-stack.md, "State directory")."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_bundle(self) -> Path:
        """The CA certificate clients trust (``SECURETRAIN_CA_BUNDLE``)."""
        return self.ca_dir / "ca.pem"

    @property
    def server_certs_dir(self) -> Path:
        return self.root / "certs" / "server"

    @property
    def client_certs_dir(self) -> Path:
        return self.root / "certs" / "client"

    @property
    def secrets_dir(self) -> Path:
        """Generated secrets (account keys); files 0600."""
        return self.root / "secrets"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"

    @property
    def lock_file(self) -> Path:
        return self.root / "run" / "stack.lock"

    @property
    def snp_platform_dir(self) -> Path:
        """The simulated SEV-SNP platform's keys and certificates (``securetrain snp report`` uses them too)."""
        return self.root / "snp-platform"

    @property
    def vtpm_ca_dir(self) -> Path:
        """The stand-in for Azure's vTPM CA, which certifies the emulated vTPM's attestation key."""
        return self.root / "vtpm-ca"

    @property
    def platform_file(self) -> Path:
        """The platform the running stack emulates (``snp`` or ``azure-cvm``): written by ``up``, removed by ``down``."""
        return self.root / "run" / "platform"

    @property
    def audit_signing_key(self) -> Path:
        """The pipeline's audit signing key (Ed25519 PEM, made by the first task that signs)."""
        return self.root / "audit" / "signing-key.pem"

    @property
    def model_signing_key(self) -> Path:
        """The pipeline's model-signing key (Ed25519 PEM, made by the first model registration)."""
        return self.root / "models" / "signing-key.pem"

    @property
    def policies_dir(self) -> Path:
        """The approved policies of the local stack: what the data owner's reviewers would sign off."""
        return self.root / "policies"

    def data_dir(self, service: str) -> Path:
        return self.root / "data" / service

    def log_file(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"

    def create(self) -> None:
        """Create the directories, readable by this user only: they hold keys and a service's data."""
        for directory in (
            self.root,
            self.root / "run",
            self.root / "logs",
            self.root / "data",
            self.root / "certs",
            self.secrets_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
