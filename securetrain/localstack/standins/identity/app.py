"""The identity service's HTTP face: the parts of Microsoft Entra ID that azure-identity talks to.

    GET  /{tenant}/.well-known/openid-configuration        v1 discovery: issuer https://sts.windows.net/{tenant}/
    GET  /{tenant}/v2.0/.well-known/openid-configuration   v2 discovery (what MSAL reads): token_endpoint
    GET  /{tenant}/discovery/keys                          {"keys": [{"kid", "kty", "x5c", ...}]}
    POST /{tenant}/oauth2/v2.0/token                       client-credentials grant (client_id, client_secret,
                                                           scope=<resource>/.default): ClientSecretCredential
         200 {"token_type": "Bearer", "expires_in", "access_token": JWT}
         400 / 401 {"error", "error_description"}          (OAuth 2.0's error shape, RFC 6749 section 5.2)
    GET  /msi/token?api-version=2019-08-01&resource=R[&client_id=C]   header X-IDENTITY-HEADER
         200 {"access_token", "expires_on", "resource", "token_type", "client_id"}
         the managed-identity endpoint of Azure's hosting environments (App Service's protocol, which
         ManagedIdentityCredential speaks when IDENTITY_ENDPOINT and IDENTITY_HEADER are set)

Access tokens are Entra's v1 access tokens, the version Key Vault and Storage accept: ``iss``
``https://sts.windows.net/{tenant}/``, ``aud`` (the resource), ``oid`` and ``sub`` (the identity's object id:
what role assignments name), ``appid`` (client id), ``idtyp`` (``app``), ``tid``, ``iat``/``nbf``/``exp``.
They are signed with the service's own keys, published at ``discovery/keys``: the Key Vault stand-in checks
signatures there, as Key Vault checks Entra's. Identities are the files ``stack up`` writes
(:class:`securetrain.localstack.identities.LocalIdentity`), read per request, so an identity added later is
known without a restart. An application signs in with its secret; a managed identity only through
``/msi/token`` with its host's header, never with a secret.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import FastAPI, Form, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from securetrain.localstack.identities import LOCAL_TENANT, IdentityFileInvalid, LocalIdentity
from securetrain.localstack.standins.attestation_service.signing import SigningKeyStore

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME_S = 3600
#: The managed-identity protocol version this endpoint speaks (App Service's; azure-identity sends it).
MANAGED_IDENTITY_API_VERSION = "2019-08-01"
_DEFAULT_SCOPE_SUFFIX = "/.default"


def token_issuer(tenant: str = LOCAL_TENANT) -> str:
    """The ``iss`` of the access tokens: Entra's v1 issuer for ``tenant``."""
    return f"https://sts.windows.net/{tenant}/"


@dataclass(frozen=True)
class IdentityServiceConfig:
    """Where the service is reached (its base URL), where identities and signing keys lie."""

    base_url: str
    identities_dir: Path
    state_dir: Path
    token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S


class _Refused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _identities(directory: Path) -> Iterator[LocalIdentity]:
    for path in sorted(directory.glob("*.json")):
        try:
            yield LocalIdentity.load(path)
        except IdentityFileInvalid as exc:
            log.warning("ignoring %s: %s", path, exc)


def _application(directory: Path, client_id: str, client_secret: str) -> LocalIdentity:
    for identity in _identities(directory):
        if hmac.compare_digest(identity.client_id, client_id):
            if identity.client_secret is not None and hmac.compare_digest(identity.client_secret, client_secret):
                return identity
            break
    log.warning("token refused: unknown client, wrong secret, or a managed identity for client_id %s", client_id)
    raise _Refused(401, "invalid_client", "unknown client_id or wrong client_secret")


def _managed_identity(directory: Path, header: str, client_id: str | None) -> LocalIdentity:
    for identity in _identities(directory):
        if identity.identity_header is not None and hmac.compare_digest(identity.identity_header, header):
            if client_id is not None and client_id != identity.client_id:
                raise _Refused(400, "invalid_request", f"no managed identity {client_id} is attached to this host")
            return identity
    log.warning("managed-identity token refused: unknown X-IDENTITY-HEADER")
    raise _Refused(401, "unauthorized_client", "the X-IDENTITY-HEADER is not this environment's")


def create_app(config: IdentityServiceConfig) -> FastAPI:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = SigningKeyStore(config.state_dir / "signing", token_lifetime=config.token_lifetime_s)
    base = f"{config.base_url.rstrip('/')}/{LOCAL_TENANT}"
    app = FastAPI(title="securetrain identity service (Entra ID stand-in)", docs_url=None, redoc_url=None)

    def access_token(identity: LocalIdentity, resource: str) -> tuple[str, int]:
        now = int(time.time())
        signer = keys.current
        claims = {
            "iss": token_issuer(identity.tenant_id),
            "aud": resource,
            "iat": now,
            "nbf": now,
            "exp": now + config.token_lifetime_s,
            "oid": identity.object_id,
            "sub": identity.object_id,
            "appid": identity.client_id,
            "idtyp": "app",
            "name": identity.name,
            "tid": identity.tenant_id,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        token = jwt.encode(claims, signer.private_key, algorithm="RS256", headers={"kid": signer.kid, "typ": "JWT"})
        log.info("issued a token for %s (audience %s)", identity.name, resource)
        return token, claims["exp"]

    @app.exception_handler(_Refused)
    def refused(_: Request, exc: _Refused) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"error": exc.error, "error_description": exc.description})

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = ", ".join(".".join(str(part) for part in error["loc"][1:]) for error in exc.errors())
        return JSONResponse(status_code=400, content={"error": "invalid_request", "error_description": f"missing or invalid: {fields}"})

    @app.get(f"/{LOCAL_TENANT}/.well-known/openid-configuration")
    def openid_configuration() -> dict[str, Any]:
        return {
            "issuer": token_issuer(),
            "jwks_uri": f"{base}/discovery/keys",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    @app.get(f"/{LOCAL_TENANT}/v2.0/.well-known/openid-configuration")
    def openid_configuration_v2() -> dict[str, Any]:
        return {
            "issuer": f"{base}/v2.0",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            # MSAL requires the field; nothing signs in interactively here, so the endpoint is not served.
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "grant_types_supported": ["client_credentials"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    @app.get(f"/{LOCAL_TENANT}/discovery/keys")
    @app.get(f"/{LOCAL_TENANT}/discovery/v2.0/keys")
    def signing_keys() -> dict[str, Any]:
        return {"keys": [key.jwk() for key in keys.published()]}

    @app.post(f"/{LOCAL_TENANT}/oauth2/v2.0/token")
    def token(
        grant_type: Annotated[str, Form()],
        client_id: Annotated[str, Form(min_length=1)],
        client_secret: Annotated[str, Form(min_length=1)],
        scope: Annotated[str, Form(min_length=1)],
    ) -> dict[str, Any]:
        if grant_type != "client_credentials":
            raise _Refused(400, "unsupported_grant_type", "only the client_credentials grant is supported")
        identity = _application(config.identities_dir, client_id, client_secret)
        if not scope.endswith(_DEFAULT_SCOPE_SUFFIX) or " " in scope:
            raise _Refused(400, "invalid_scope", f"scope must be one '<resource>/.default', not {scope!r}")
        issued, _ = access_token(identity, scope[: -len(_DEFAULT_SCOPE_SUFFIX)])
        return {"token_type": "Bearer", "expires_in": config.token_lifetime_s, "ext_expires_in": config.token_lifetime_s,
                "access_token": issued}  # fmt: skip

    @app.get("/msi/token")
    def managed_identity_token(
        api_version: Annotated[str, Query(alias="api-version")],
        resource: Annotated[str, Query(min_length=1)],
        identity_header: Annotated[str, Header(alias="X-IDENTITY-HEADER", min_length=1)],
        client_id: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        if api_version != MANAGED_IDENTITY_API_VERSION:
            raise _Refused(400, "invalid_request", f"api-version must be {MANAGED_IDENTITY_API_VERSION}")
        identity = _managed_identity(config.identities_dir, identity_header, client_id)
        issued, expires_on = access_token(identity, resource.removesuffix(_DEFAULT_SCOPE_SUFFIX))
        return {"access_token": issued, "expires_on": str(expires_on), "resource": resource, "token_type": "Bearer",
                "client_id": identity.client_id}  # fmt: skip

    return app
