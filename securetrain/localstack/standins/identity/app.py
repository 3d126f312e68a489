"""The identity service's HTTP face: Entra ID's client-credentials token endpoint and its signing keys.

    GET  /{tenant}/.well-known/openid-configuration   issuer, jwks_uri, token_endpoint
    GET  /{tenant}/discovery/keys                     {"keys": [{"kid", "kty", "x5c", ...}]}
    POST /{tenant}/oauth2/v2.0/token                  form: grant_type=client_credentials, client_id,
                                                      client_secret, scope=<resource>/.default
         200 {"token_type": "Bearer", "expires_in", "access_token": JWT}
         400 / 401 {"error", "error_description"}     (OAuth 2.0's error shape, RFC 6749 section 5.2)

Access tokens carry ``iss`` (``https://HOST:PORT/<tenant>``), ``aud`` (the resource of the scope),
``oid`` and ``sub`` (the identity's object id: what role assignments name), ``appid`` (client id),
``name``, ``tid``, ``iat``/``nbf``/``exp``. Identities and their secrets are the credentials files
``stack up`` writes (:class:`securetrain.core.identity.LocalIdentity`); they are read per request, so an
identity added later is known without a restart.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from securetrain.localstack.standins.attestation_service.signing import SigningKeyStore
from securetrain.core.identity import LOCAL_TENANT, IdentityFileInvalid, LocalIdentity

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME_S = 3600
_DEFAULT_SCOPE_SUFFIX = "/.default"


@dataclass(frozen=True)
class IdentityServiceConfig:
    """Where the service is reached (its base URL), where identities and signing keys lie."""

    base_url: str
    identities_dir: Path
    state_dir: Path
    token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "error_description": description})


def _find_identity(directory: Path, client_id: str) -> LocalIdentity | None:
    for path in sorted(directory.glob("*.json")):
        try:
            identity = LocalIdentity.load(path)
        except IdentityFileInvalid as exc:
            log.warning("ignoring %s: %s", path, exc)
            continue
        if hmac.compare_digest(identity.client_id, client_id):
            return identity
    return None


def create_app(config: IdentityServiceConfig) -> FastAPI:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = SigningKeyStore(config.state_dir / "signing", token_lifetime=config.token_lifetime_s)
    issuer = f"{config.base_url.rstrip('/')}/{LOCAL_TENANT}"
    app = FastAPI(title="securetrain identity service (Entra ID stand-in)", docs_url=None, redoc_url=None)

    @app.get(f"/{LOCAL_TENANT}/.well-known/openid-configuration")
    def openid_configuration() -> dict[str, Any]:
        return {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/discovery/keys",
            "token_endpoint": f"{issuer}/oauth2/v2.0/token",
            "grant_types_supported": ["client_credentials"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    @app.get(f"/{LOCAL_TENANT}/discovery/keys")
    def signing_keys() -> dict[str, Any]:
        return {"keys": [key.jwk() for key in keys.published()]}

    @app.post(f"/{LOCAL_TENANT}/oauth2/v2.0/token")
    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only the client_credentials grant is supported")
        client_id, client_secret, scope = (form.get(k) for k in ("client_id", "client_secret", "scope"))
        if not all(isinstance(v, str) and v for v in (client_id, client_secret, scope)):
            return _oauth_error(400, "invalid_request", "client_id, client_secret and scope are required")
        assert isinstance(client_id, str) and isinstance(client_secret, str) and isinstance(scope, str)
        identity = _find_identity(config.identities_dir, client_id)
        if identity is None or not hmac.compare_digest(identity.client_secret, client_secret):
            log.warning("token refused: unknown client or wrong secret for client_id %s", client_id)
            return _oauth_error(401, "invalid_client", "unknown client_id or wrong client_secret")
        if not scope.endswith(_DEFAULT_SCOPE_SUFFIX) or " " in scope:
            return _oauth_error(400, "invalid_scope", f"scope must be one '<resource>/.default', not {scope!r}")
        now = int(time.time())
        signer = keys.current
        claims = {
            "iss": issuer,
            "aud": scope[: -len(_DEFAULT_SCOPE_SUFFIX)],
            "iat": now,
            "nbf": now,
            "exp": now + config.token_lifetime_s,
            "oid": identity.object_id,
            "sub": identity.object_id,
            "appid": identity.client_id,
            "name": identity.name,
            "tid": identity.tenant_id,
            "uti": secrets.token_urlsafe(16),
        }
        access_token = jwt.encode(claims, signer.private_key, algorithm="RS256", headers={"kid": signer.kid, "typ": "JWT"})
        log.info("issued a token for %s (audience %s)", identity.name, claims["aud"])
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": config.token_lifetime_s, "access_token": access_token}
        )

    return app
