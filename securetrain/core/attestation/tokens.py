"""Validating attestation tokens: the relying party's side of Azure Attestation (MAA) and of NVIDIA's NRAS.

Airflow's sensors, the Key Vault stand-in and the TEE itself all trust a token only after this module
has checked it: a signature by a key the authority publishes, in the one algorithm that authority signs with
(:class:`AuthorityKeys`: MAA and Entra ID sign RS256 and publish certificates in ``x5c`` behind their OpenID
metadata; NRAS signs ES384 with a P-384 key and publishes only a JWKS), the issuer, ``exp``/``nbf``/``iat``
with a small clock skew, and — where the caller knows them — the nonce and the attestation policy's hash
(``x-ms-policy-hash``). The algorithm is the pinned authority's, never the token header's. PyJWT does the JWS
work.

The authority's keys are fetched over TLS that is verified (against the local stack's CA, or the
system's store for Azure), with the project's bounded retries (:mod:`securetrain.core.http`), and cached; an unknown ``kid`` refreshes the cache once, which is how a key
rollover at the authority is followed.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from securetrain.core.errors import SecuretrainError, SecurityViolation
from securetrain.core.http import HttpsSession

log = logging.getLogger(__name__)

DEFAULT_LEEWAY_SECONDS = 60
_REQUIRED_CLAIMS = ["iss", "iat", "nbf", "exp"]
_JWKS_MAX_AGE_SECONDS = 300
#: The algorithms an authority may be pinned to: one per authority, never taken from a token.
RS256, ES384 = "RS256", "ES384"
SIGNING_ALGORITHMS = (RS256, ES384)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class TokenRejected(SecurityViolation):
    """The token failed a check; the message names which."""


class AuthorityUnreachable(SecuretrainError):
    """The attestation authority's metadata or keys could not be fetched: transient, may be retried."""


@dataclass(frozen=True)
class ValidatedToken:
    """A token whose signature, issuer and lifetime were checked, with its claims."""

    raw: str
    claims: Mapping[str, Any]
    kid: str

    @property
    def expires_at(self) -> int:
        return int(self.claims["exp"])

    @property
    def runtime_keys(self) -> list[Mapping[str, Any]]:
        """The JWKs the TEE put in its runtime data (``x-ms-runtime.keys``); empty if none."""
        runtime = self.claims.get("x-ms-runtime")
        keys = runtime.get("keys") if isinstance(runtime, Mapping) else None
        return [k for k in keys if isinstance(k, Mapping)] if isinstance(keys, list) else []


class AuthorityKeys:
    """The signing keys a token issuer publishes, fetched and cached, and the one algorithm it signs with.

    Where the keys are published: by default the issuer's OpenID metadata at
    ``{issuer}/.well-known/openid-configuration`` (an attestation provider's), or at ``metadata_url``
    (Microsoft Entra ID publishes the metadata of the issuer ``https://sts.windows.net/{tenant}/`` at its
    authority, ``https://login.microsoftonline.com/{tenant}/``); the metadata must name ``issuer``, and its
    ``jwks_uri`` must be on the metadata's own origin. An authority with no OpenID metadata (NVIDIA's NRAS
    publishes only ``/.well-known/jwks.json``) is pinned by its ``jwks_url`` instead.

    ``algorithm`` is what its tokens must be signed with: ``RS256`` (RSA keys, from ``x5c[0]``) or ``ES384``
    (P-384 keys, from ``x5c[0]`` or the JWK's ``x``/``y``); a published key of another type is not this
    authority's key.
    """

    def __init__(
        self, issuer: str, *, metadata_url: str | None = None, jwks_url: str | None = None, algorithm: str = RS256,
        verify: str | bool = True, timeout: float = 10.0,
    ) -> None:  # fmt: skip
        if not issuer.startswith("https://"):
            raise TokenRejected(f"token issuer {issuer!r} is not an https URL")
        if algorithm not in SIGNING_ALGORITHMS:
            raise TokenRejected(f"{issuer} cannot be pinned to {algorithm!r}: only {', '.join(SIGNING_ALGORITHMS)}")
        if metadata_url is not None and jwks_url is not None:
            raise TokenRejected(f"{issuer}'s keys are found through its metadata or at a JWKS URL, not both")
        for url in (metadata_url, jwks_url):
            if url is not None and not url.startswith("https://"):
                raise TokenRejected(f"{issuer}'s keys must be fetched over https, not from {url!r}")
        # Kept as given when the metadata is elsewhere: Entra's v1 issuer ends with a slash, and `iss` must match exactly.
        self.issuer = issuer if metadata_url else issuer.rstrip("/")
        self.algorithm = algorithm
        self.jwks_url = jwks_url
        self._metadata_url = metadata_url or f"{self.issuer}/.well-known/openid-configuration"  # https: the session's
        self._verify = verify
        self._timeout = timeout
        self._keys: dict[str, PublicKey] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def key(self, kid: str) -> PublicKey:
        with self._lock:
            stale = time.monotonic() - self._fetched_at > _JWKS_MAX_AGE_SECONDS
            if kid not in self._keys or stale:
                self._keys = self._fetch()
                self._fetched_at = time.monotonic()
            try:
                return self._keys[kid]
            except KeyError:
                raise TokenRejected(
                    f"the token is signed with key {kid!r}, which {self.issuer} does not publish as an {self.algorithm} key"
                ) from None

    def key_ids(self) -> list[str]:
        """The ids of the keys the authority publishes now (fetched afresh: this is also a reachability check)."""
        with self._lock:
            self._keys = self._fetch()
            self._fetched_at = time.monotonic()
            return sorted(self._keys)

    def _get_json(self, url: str) -> Any:
        try:
            # A session per fetch: fetches are minutes apart, and an idle connection would hold up a server's shutdown.
            with HttpsSession(self._verify) as session:
                response = session.get(url, timeout=self._timeout)
            response.raise_for_status()
            return response.json()
        except requests.exceptions.SSLError as exc:
            # A TLS failure is not transient: the authority is not who it claims to be (or not trusted).
            raise TokenRejected(f"TLS verification of {url} failed: {exc}") from None
        except (requests.RequestException, ValueError) as exc:
            raise AuthorityUnreachable(f"cannot fetch {url}: {exc}") from None

    def _discover_jwks(self) -> str:
        if self.jwks_url is not None:
            return self.jwks_url
        metadata = self._get_json(self._metadata_url)
        named = metadata.get("issuer") if isinstance(metadata, dict) else None
        if not isinstance(named, str) or named.rstrip("/") != self.issuer.rstrip("/"):
            raise TokenRejected(f"the OpenID metadata at {self._metadata_url} names another issuer: {named!r}")
        jwks_uri = metadata.get("jwks_uri")
        origin = "/".join(self._metadata_url.split("/", 3)[:3]) + "/"
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(origin):
            raise TokenRejected(f"{self.issuer}'s jwks_uri {jwks_uri!r} is not on the metadata's origin {origin}")
        return jwks_uri

    def _fetch(self) -> dict[str, PublicKey]:
        jwks_uri = self._discover_jwks()
        document = self._get_json(jwks_uri)
        keys: dict[str, PublicKey] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            try:
                public_key = published_key(entry, self.algorithm)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                log.warning("ignoring a malformed signing key from %s: %s", jwks_uri, exc)
                continue
            if public_key is not None:
                keys[entry["kid"]] = public_key
        log.debug("fetched %d %s signing keys from %s", len(keys), self.algorithm, jwks_uri)
        return keys


def _b64url_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def published_key(entry: Mapping[str, Any], algorithm: str) -> PublicKey | None:
    """The public key a JWKS entry publishes for ``algorithm``; None when it is not a key of that algorithm.

    The certificate ``x5c[0]`` is preferred (MAA's and NRAS's relying-party code read it); an ES384 entry
    without one is read from its ``crv``/``x``/``y``. An entry whose certificate and ``x``/``y`` name different
    keys is refused (ValueError): which of the two the authority meant cannot be told.
    """
    if entry.get("alg") not in (None, algorithm) or entry.get("use") not in (None, "sig"):
        return None
    jwk_key: PublicKey | None = None
    if algorithm == ES384 and entry.get("kty") == "EC" and entry.get("crv") == "P-384" and "x" in entry:
        jwk_key = ec.EllipticCurvePublicNumbers(_b64url_int(entry["x"]), _b64url_int(entry["y"]), ec.SECP384R1()).public_key()
    certificate_key: Any = None
    if entry.get("x5c"):
        certificate_key = x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0], validate=True)).public_key()
        if jwk_key is not None and certificate_key.public_numbers() != jwk_key.public_numbers():
            raise ValueError(f"key {entry.get('kid')!r}: its x5c certificate and its x/y are different keys")
    public_key = certificate_key if certificate_key is not None else jwk_key
    if algorithm == RS256 and isinstance(public_key, rsa.RSAPublicKey):
        return public_key
    if algorithm == ES384 and isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP384R1):
        return public_key
    return None


class TokenValidator:
    """Checks tokens from one attestation authority (its issuer URL)."""

    def __init__(self, keys: AuthorityKeys, *, leeway: int = DEFAULT_LEEWAY_SECONDS) -> None:
        self._keys = keys
        self._leeway = leeway

    @property
    def issuer(self) -> str:
        return self._keys.issuer

    def validate(
        self,
        token: str,
        *,
        expected_nonce: str | None = None,
        expected_policy_hash: str | None = None,
        historical: bool = False,
    ) -> ValidatedToken:
        """``token``'s claims once its signature, issuer and times verify; ``historical`` skips the expiry (a
        token recorded as evidence of what happened while it was valid)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise TokenRejected(f"the token is not a JWS: {exc}") from None
        algorithm = self._keys.algorithm
        if header.get("alg") != algorithm:
            raise TokenRejected(
                f"the token's algorithm is {header.get('alg')!r}; only {algorithm} is accepted from {self.issuer}"
            )
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenRejected("the token's header names no signing key (kid)")
        try:
            claims = jwt.decode(
                token,
                key=self._keys.key(kid),
                algorithms=[algorithm],
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS, "verify_aud": False, "verify_exp": not historical},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the token is not yet valid (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"the token was not issued by {self.issuer}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected(f"the token's signature does not verify with {self.issuer}'s key {kid}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"the token is invalid: {exc}") from None
        if expected_nonce is not None and claims.get("nonce") != expected_nonce:
            raise TokenRejected(
                f"the token's nonce {claims.get('nonce')!r} is not this job's: stale or replayed evidence"
            )
        if expected_policy_hash is not None and claims.get("x-ms-policy-hash") != expected_policy_hash:
            raise TokenRejected(
                f"the token was appraised under policy {claims.get('x-ms-policy-hash')!r}, "
                f"not the approved {expected_policy_hash!r}"
            )
        return ValidatedToken(token, claims, kid)
