"""Authenticating to Key Vault as a named identity of the local stack, the way azure-identity does on Azure.

:class:`LocalIdentityCredential` implements azure-core's ``TokenCredential``: the Key Vault SDK clients
call ``get_token(scope, tenant_id=...)`` after the vault's 401 challenge, and send the token as a bearer.
It obtains tokens with the OAuth 2.0 client-credentials grant from the stack's identity service
(:mod:`securetrain.localstack.standins.identity`), over TLS verified against the stack CA, and caches each until shortly
before it expires. On Azure the same code paths take ``azure.identity.ClientSecretCredential`` or a
managed identity instead; nothing else changes.

An identity's credentials live in one JSON file (0600) that ``securetrain stack up`` writes to
``<state>/secrets/identities/<name>.json`` (:class:`LocalIdentity`); ``stack.env`` names each file as
``SECURETRAIN_IDENTITY_<NAME>_CREDENTIALS``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError

from securetrain.core.errors import ConfigurationError
from securetrain.core.fsutil import atomic_output

log = logging.getLogger(__name__)

LOCAL_TENANT = "securetrain-local"
#: The identities the local stack creates, and what each is for (docs/keys.md, "Roles").
PIPELINE_IDENTITY = "pipeline"  # Airflow: reads keys (public halves, release policies)
CVM_IDENTITY = "cvm"  # the TEE: Secure Key Release only
ROTATOR_IDENTITY = "key-rotator"  # Airflow's key rotation: makes a new version of an existing key, nothing else
DATA_OWNER_IDENTITY = "data-owner"  # creates KEKs under immutable release policies; never unwraps or releases
# Refresh a cached token this long before it expires, so that a request never leaves with a token that
# expires on the way.
_REFRESH_MARGIN_S = 300
_TIMEOUT_S = 10


class IdentityFileInvalid(ConfigurationError):
    """An identity's credentials file is missing, readable by others, or malformed."""


def credentials_variable(identity: str) -> str:
    """The ``stack.env`` variable that names ``identity``'s credentials file."""
    return f"SECURETRAIN_IDENTITY_{identity.upper().replace('-', '_')}_CREDENTIALS"


@dataclass(frozen=True)
class LocalIdentity:
    """A named identity: its client id and secret (for the token endpoint) and its object id (for roles)."""

    name: str
    client_id: str
    client_secret: str
    object_id: str
    tenant_id: str = LOCAL_TENANT

    @classmethod
    def generate(cls, name: str) -> LocalIdentity:
        return cls(name, str(uuid.uuid4()), base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(), str(uuid.uuid4()))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with atomic_output(path, mode=0o600) as out:
            out.write(json.dumps(asdict(self), indent=2).encode())

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
        """The identity in ``path``, generated (new id and secret) if the file does not exist yet."""
        if not path.exists():
            cls.generate(name).save(path)
        identity = cls.load(path)
        if identity.name != name:
            raise IdentityFileInvalid(f"{path} holds identity {identity.name!r}, not {name!r}")
        return identity


class LocalIdentityCredential(TokenCredential):
    """A ``TokenCredential`` for one local identity, obtaining tokens from the stack's identity service.

    ``authority`` is the identity service's URL (``SECURETRAIN_IDENTITY_ENDPOINT``), ``ca_bundle`` the CA
    its TLS certificate must chain to.
    """

    def __init__(self, authority: str, identity: LocalIdentity, *, ca_bundle: str | os.PathLike[str]) -> None:
        if not authority.startswith("https://"):
            raise ConfigurationError(f"the identity authority {authority!r} is not an https URL")
        self._token_url = f"{authority.rstrip('/')}/{identity.tenant_id}/oauth2/v2.0/token"
        self._identity = identity
        self._session = requests.Session()
        # Per request, not Session.verify: requests lets REQUESTS_CA_BUNDLE override a session's setting.
        self._ca_bundle = str(ca_bundle)
        self._cache: dict[str, AccessToken] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_stack_env(cls, env: Mapping[str, str], identity: str) -> LocalIdentityCredential:
        """The credential of ``identity`` (``pipeline``, ``cvm``, ``key-rotator``, ``data-owner``) from parsed ``stack.env``."""
        try:
            authority = env["SECURETRAIN_IDENTITY_ENDPOINT"]
            ca_bundle = env["SECURETRAIN_CA_BUNDLE"]
            path = env[credentials_variable(identity)]
        except KeyError as exc:
            raise ConfigurationError(
                f"stack.env lacks {exc.args[0]}: is the stack up, and is {identity!r} one of its identities?"
            ) from None
        return cls(authority, LocalIdentity.load(Path(path)), ca_bundle=ca_bundle)

    @property
    def identity(self) -> LocalIdentity:
        return self._identity

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """A bearer token for ``scopes`` (one resource's ``.default`` scope), from the cache if still fresh."""
        if len(scopes) != 1:
            raise ValueError(f"exactly one scope is supported, got {scopes!r}")
        if tenant_id is not None and tenant_id != self._identity.tenant_id:
            raise ClientAuthenticationError(
                message=f"the resource asks for tenant {tenant_id!r}; identity {self._identity.name} is in "
                f"{self._identity.tenant_id!r}"
            )
        scope = scopes[0]
        with self._lock:
            cached = self._cache.get(scope)
            if cached is not None and cached.expires_on - _REFRESH_MARGIN_S > time.time():
                return cached
            token = self._request(scope)
            self._cache[scope] = token
            return token

    def _request(self, scope: str) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._identity.client_id,
            "client_secret": self._identity.client_secret,
            "scope": scope,
        }
        try:
            response = self._session.post(self._token_url, data=form, verify=self._ca_bundle, timeout=_TIMEOUT_S)
        except requests.exceptions.SSLError as exc:
            raise ClientAuthenticationError(message=f"TLS verification of {self._token_url} failed: {exc}") from None
        except requests.RequestException as exc:
            raise ClientAuthenticationError(message=f"cannot reach {self._token_url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or "access_token" not in body:
            reason = body.get("error_description") or body.get("error") or response.text[:200]
            raise ClientAuthenticationError(
                message=f"identity {self._identity.name} got no token for {scope}: HTTP {response.status_code}, {reason}"
            )
        log.debug("identity %s obtained a token for %s", self._identity.name, scope)
        return AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> LocalIdentityCredential:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
