"""Tokens of an authority pinned to ES384 (NVIDIA's NRAS): accepted only when signed ES384 by a P-384 key its JWKS
publishes (as ``x5c`` or as ``x``/``y``), fetched over verified TLS; every other algorithm, key or shape is refused.
The JWKS is served over real TLS by the local CA; the MAA (RS256) path is tests/integration/test_attestation.py's."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from securetrain.core.attestation.tokens import ES384, RS256, AuthorityKeys, TokenRejected, TokenValidator, published_key
from securetrain.localstack.pki import LocalCA

ISSUER = "https://nras.attestation.nvidia.com"
KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_P384 = ec.generate_private_key(ec.SECP384R1())
P256 = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url(value: int, length: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode()


def _certificate(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signing")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA384())
    )  # fmt: skip
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


def ec_jwk(kid: str, key: ec.EllipticCurvePrivateKey, *, x5c: bool = True, xy: bool = True) -> dict[str, Any]:
    """A key as NRAS publishes it: ``kty`` EC, ``crv`` P-384, ``x``/``y`` and its certificate in ``x5c``."""
    point = key.public_key().public_numbers()
    entry: dict[str, Any] = {"kid": kid, "kty": "EC", "crv": "P-384", "use": "sig"}
    if xy:
        entry |= {"x": _b64url(point.x, 48), "y": _b64url(point.y, 48)}
    if x5c:
        entry["x5c"] = [_certificate(key)]
    return entry


class JwksServer:
    """An HTTPS server of one JWKS document, which a test may replace."""

    def __init__(self, tmp: Path) -> None:
        ca = LocalCA.load_or_create(tmp / "ca")
        files = ca.issue_server_certificate(tmp / "tls", "jwks")
        self.ca_bundle = str(ca.cert_path)
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.cert_path, files.key_path)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwksServer]:
    jwks = JwksServer(tmp_path_factory.mktemp("jwks"))
    yield jwks
    jwks.close()


@pytest.fixture
def validator(server: JwksServer) -> TokenValidator:
    server.document = {"keys": [ec_jwk("nv-eat-kid-prod-1", KEY)]}
    return TokenValidator(AuthorityKeys(ISSUER, jwks_url=server.url, algorithm=ES384, verify=server.ca_bundle))


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600, "eat_nonce": "ab" * 32, **changes}


def es384(key: ec.EllipticCurvePrivateKey = KEY, kid: str = "nv-eat-kid-prod-1", **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm="ES384", headers={"kid": kid})


def _forged(header: dict[str, Any], signature: bytes) -> str:
    """A compact JWS with ``header``, the usual claims and ``signature``: for algorithms PyJWT rightly refuses to sign."""
    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    return f"{part(json.dumps(header).encode())}.{part(json.dumps(claims()).encode())}.{part(signature)}"


def test_a_token_signed_es384_by_a_published_key_is_accepted(validator: TokenValidator) -> None:
    validated = validator.validate(es384())
    assert validated.kid == "nv-eat-kid-prod-1" and validated.claims["eat_nonce"] == "ab" * 32


@pytest.mark.parametrize("published", [
    {"x5c": True, "xy": False},  # the certificate only, which NVIDIA's SDK reads
    {"x5c": False, "xy": True},  # the JWK's coordinates only
])  # fmt: skip
def test_the_key_is_read_from_x5c_or_from_x_and_y(server: JwksServer, validator: TokenValidator, published: dict) -> None:
    server.document = {"keys": [ec_jwk("nv-eat-kid-prod-1", KEY, **published)]}
    assert validator.validate(es384()).kid == "nv-eat-kid-prod-1"


def test_a_key_whose_certificate_and_coordinates_differ_is_not_published(server: JwksServer, validator: TokenValidator) -> None:
    server.document = {"keys": [{**ec_jwk("nv-eat-kid-prod-1", KEY), "x5c": [_certificate(OTHER_P384)]}]}
    with pytest.raises(TokenRejected, match="does not publish"):
        validator.validate(es384())


def _rs256() -> str:
    return jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "nv-eat-kid-prod-1"})


def _hs384_keyed_with_the_public_key() -> str:
    """Algorithm confusion: an HMAC keyed with the published public key, which anyone holds."""
    public = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS384", "kid": "nv-eat-kid-prod-1", "typ": "JWT"}
    unsigned = _forged(header, b"").rsplit(".", 1)[0]
    return _forged(header, hmac.new(public, unsigned.encode(), hashlib.sha384).digest())


@pytest.mark.parametrize(("token", "refusal"), [
    (_rs256, "algorithm is 'RS256'"),
    (_hs384_keyed_with_the_public_key, "algorithm is 'HS384'"),
    (lambda: _forged({"alg": "none", "kid": "nv-eat-kid-prod-1"}, b""), "algorithm is 'none'"),
    (lambda: _forged({"alg": "ES256", "kid": "nv-eat-kid-prod-1"}, b"\0" * 64), "algorithm is 'ES256'"),
    (lambda: jwt.encode(claims(), KEY, algorithm="ES384"), "names no signing key"),
    (lambda: es384(OTHER_P384), "signature does not verify"),
    (lambda: es384(kid="nv-eat-kid-other"), "does not publish"),
    (lambda: es384(iss="https://nras.attestation-dev.nvidia.com"), "not issued by"),
    (lambda: es384(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "expired"),
])  # fmt: skip
def test_a_token_not_signed_as_the_authority_signs_is_refused(validator: TokenValidator, token, refusal: str) -> None:
    with pytest.raises(TokenRejected, match=refusal):
        validator.validate(token())


@pytest.mark.parametrize("wrong_key", [
    {"kid": "nv-eat-kid-prod-1", "kty": "RSA", "x5c": [_certificate(RSA_KEY)]},
    {**ec_jwk("nv-eat-kid-prod-1", P256, xy=False)},
    {**ec_jwk("nv-eat-kid-prod-1", KEY), "alg": "ES256"},
    {**ec_jwk("nv-eat-kid-prod-1", KEY), "use": "enc"},
])  # fmt: skip
def test_a_published_key_of_another_type_is_not_the_authoritys(server: JwksServer, validator: TokenValidator, wrong_key) -> None:
    server.document = {"keys": [wrong_key]}
    with pytest.raises(TokenRejected, match="does not publish"):
        validator.validate(es384())


def test_a_key_rollover_is_followed(server: JwksServer, validator: TokenValidator) -> None:
    validator.validate(es384())
    server.document = {"keys": [ec_jwk("nv-eat-kid-prod-1", KEY), ec_jwk("nv-eat-kid-prod-2", OTHER_P384)]}
    assert validator.validate(es384(OTHER_P384, kid="nv-eat-kid-prod-2")).kid == "nv-eat-kid-prod-2"


def test_the_jwks_is_fetched_over_verified_tls_only(server: JwksServer, tmp_path: Path) -> None:
    other_ca = LocalCA.load_or_create(tmp_path / "other-ca")
    keys = AuthorityKeys(ISSUER, jwks_url=server.url, algorithm=ES384, verify=str(other_ca.cert_path))
    with pytest.raises(TokenRejected, match="TLS verification"):
        TokenValidator(keys).validate(es384())
    with pytest.raises(TokenRejected, match="https"):
        AuthorityKeys(ISSUER, jwks_url=server.url.replace("https", "http"), algorithm=ES384)


@pytest.mark.parametrize(("arguments", "refusal"), [
    ({"algorithm": "none"}, "cannot be pinned"),
    ({"algorithm": "HS384"}, "cannot be pinned"),
    ({"metadata_url": ISSUER + "/.well-known/openid-configuration", "jwks_url": ISSUER + "/.well-known/jwks.json"},
     "not both"),
])  # fmt: skip
def test_an_authority_is_pinned_to_one_asymmetric_algorithm_and_one_key_source(arguments: dict, refusal: str) -> None:
    with pytest.raises(TokenRejected, match=refusal):
        AuthorityKeys(ISSUER, **arguments)


def test_an_rs256_authority_reads_no_ec_key_and_an_es384_one_no_rsa_key() -> None:
    assert published_key(ec_jwk("k", KEY), RS256) is None
    assert published_key({"kid": "k", "kty": "RSA", "x5c": [_certificate(RSA_KEY)]}, ES384) is None
    assert isinstance(published_key({"kid": "k", "kty": "RSA", "x5c": [_certificate(RSA_KEY)]}, RS256), rsa.RSAPublicKey)
