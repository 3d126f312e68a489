"""Who is calling: the Entra ID bearer token a stand-in's caller presents, validated as the Azure service would.

Every stand-in that Azure protects with Microsoft Entra ID (Key Vault, Azure Attestation's policy management)
authenticates a request the same way: ``Authorization: Bearer <access token>`` from the identity service
(:mod:`securetrain.localstack.standins.identity`), validated like every other token in the project
(:class:`securetrain.core.attestation.tokens.TokenValidator`: RS256 with a key the issuer publishes over
verified TLS, issuer, ``exp``/``nbf``) plus the audience, which must be the service's resource, and an object
id (``oid``), which role assignments name. Each refusal says what was wrong (:class:`Refusal`); each service
answers it in its own error shape.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from securetrain.core.attestation.tokens import AuthorityKeys, AuthorityUnreachable, TokenRejected, TokenValidator


class Refusal(enum.Enum):
    """Why a request is not authenticated; the services map each to their own error code."""

    MISSING = "missing"  # no Authorization header
    NOT_BEARER = "not-bearer"  # a header, but not "Bearer <token>"
    INVALID = "invalid"  # signature, issuer, lifetime ...
    ISSUER_UNREACHABLE = "issuer-unreachable"  # the issuer's keys could not be fetched
    WRONG_AUDIENCE = "wrong-audience"  # a token for another service
    NO_OBJECT_ID = "no-object-id"  # nothing a role assignment could name


class Unauthenticated(Exception):
    """No token, or a token that failed validation: the service answers 401."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the identity's object id and display name."""

    object_id: str
    name: str


class AccessTokenValidator:
    """Authenticates bearer tokens for ``audience`` from ``issuer``, whose keys ``authority`` publishes."""

    def __init__(self, issuer: str, authority: str, ca_bundle: str, audience: str) -> None:
        metadata = f"{authority.rstrip('/')}/.well-known/openid-configuration"
        self._validator = TokenValidator(AuthorityKeys(issuer, metadata_url=metadata, verify=ca_bundle), leeway=0)
        self.audience = audience

    @property
    def issuer(self) -> str:
        return self._validator.issuer

    def caller(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header value names; :class:`Unauthenticated` if it does not."""
        if not authorization:
            raise Unauthenticated(Refusal.MISSING, "Request is missing a Bearer or PoP token.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(Refusal.NOT_BEARER, "the Authorization header is not 'Bearer <token>'.")
        try:
            claims = self._validator.validate(token.strip()).claims
        except TokenRejected as exc:
            raise Unauthenticated(Refusal.INVALID, f"the access token is not valid: {exc}") from None
        except AuthorityUnreachable as exc:
            raise Unauthenticated(Refusal.ISSUER_UNREACHABLE, f"the token issuer's keys cannot be fetched: {exc}") from None
        if claims.get("aud") != self.audience:
            raise Unauthenticated(
                Refusal.WRONG_AUDIENCE, f"Invalid audience. Expected {self.audience}, found: {claims.get('aud')}."
            )
        object_id = claims.get("oid")
        if not isinstance(object_id, str):
            raise Unauthenticated(Refusal.NO_OBJECT_ID, "the access token names no object id (oid).")
        return Caller(object_id, str(claims.get("name") or claims.get("appid") or object_id))
