"""The local stack's identities: what the identity stand-in knows of each, as Entra ID knows a principal.

An **application** (service principal) signs in with a client secret; a **managed identity** has no secret
anyone holds: its tokens go only to the host it is attached to, which proves itself with that host's secret
(``IDENTITY_HEADER``, as Azure's hosting environments expose it). ``securetrain stack up`` writes each identity
to ``<state>/secrets/identities/<name>.json`` (0600); the identity stand-in reads them per request.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from securetrain.core.credentials import ClosableCredential, azure_credential
from securetrain.core.errors import ConfigurationError
from securetrain.localstack.layout import write_file

#: The stack's tenant id (a GUID, as Entra's are; fixed, so settings written once stay valid).
LOCAL_TENANT = "5ec0e7a1-0c41-4c5a-9d1e-10ca157ac4e0"
#: The identities the local stack creates, and what each is for (docs/keys.md, "Roles").
PIPELINE_IDENTITY = "pipeline"  # Airflow: reads keys (public halves, release policies)
CVM_IDENTITY = "cvm"  # the TEE: Secure Key Release only
ROTATOR_IDENTITY = "key-rotator"  # Airflow's key rotation: makes a new version of an existing key, nothing else
DATA_OWNER_IDENTITY = "data-owner"  # creates KEKs under immutable release policies; never unwraps or releases
#: The identities that are managed identities: the TEE's, which no one outside the TEE may sign in as.
MANAGED_IDENTITIES = frozenset({CVM_IDENTITY})


class IdentityFileInvalid(ConfigurationError):
    """An identity's credentials file is missing, readable by others, or malformed."""


@dataclass(frozen=True)
class LocalIdentity:
    """A named identity: its client id, its object id (what role assignments name) and how it signs in.

    Exactly one of ``client_secret`` (an application) and ``identity_header`` (a managed identity: the
    secret of the one host it is attached to) is set.
    """

    name: str
    client_id: str
    object_id: str
    client_secret: str | None = None
    identity_header: str | None = None
    tenant_id: str = LOCAL_TENANT

    def __post_init__(self) -> None:
        if (self.client_secret is None) == (self.identity_header is None):
            raise IdentityFileInvalid(f"identity {self.name!r} must have either a client secret or a managed-identity header")

    @property
    def managed(self) -> bool:
        return self.identity_header is not None

    @classmethod
    def generate(cls, name: str) -> LocalIdentity:
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        if name in MANAGED_IDENTITIES:
            return cls(name, str(uuid.uuid4()), str(uuid.uuid4()), identity_header=secret)
        return cls(name, str(uuid.uuid4()), str(uuid.uuid4()), client_secret=secret)

    def save(self, path: Path) -> None:
        write_file(path, json.dumps(asdict(self), indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, path: Path) -> LocalIdentity:
        """Read ``path``; :class:`IdentityFileInvalid` if missing, shared with other users, or malformed."""
        try:
            if path.stat().st_mode & 0o077:
                raise IdentityFileInvalid(f"{path} is readable by other users: chmod 600 it (it holds a secret)")
            document = json.loads(path.read_text())
            return cls(**document)
        except FileNotFoundError:
            raise IdentityFileInvalid(f"no identity credentials at {path}: run `securetrain stack up`") from None
        except (ValueError, TypeError) as exc:
            raise IdentityFileInvalid(f"{path} is not an identity credentials file: {exc}") from None

    @classmethod
    def load_or_create(cls, path: Path, name: str) -> LocalIdentity:
        """The identity in ``path``, generated (new ids and secret) if the file does not exist or is of the other kind."""
        if not path.exists() or cls.load(path).managed != (name in MANAGED_IDENTITIES):
            cls.generate(name).save(path)
        identity = cls.load(path)
        if identity.name != name:
            raise IdentityFileInvalid(f"{path} holds identity {identity.name!r}, not {name!r}")
        return identity


def application_credential(identity: LocalIdentity, authority_host: str, ca_bundle: Path) -> ClosableCredential:
    """azure-identity's credential of the application ``identity``, signing in at the identity stand-in."""
    if identity.client_secret is None:
        raise IdentityFileInvalid(f"{identity.name} is a managed identity: only its host obtains its tokens")
    return azure_credential(client_id=identity.client_id, client_secret=identity.client_secret,
                            tenant_id=identity.tenant_id, authority_host=authority_host, verify=str(ca_bundle),
                            instance_discovery=False)  # fmt: skip
