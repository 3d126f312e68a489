"""Attested provenance of a model: the TEE's signed statement, the pipeline's signature, and their checks.

The TEE signs the *model statement* (:func:`model_statement`: run, sealed and plaintext model digests, every
dataset shard's plaintext digest, hyperparameters, metrics, the head of its event log) with the job's
attested key; the pipeline signs the registry manifest that carries it. The chain from the attestation
service's key to the digests, and why not OpenSSF ``model-signing``, are in docs/models.md ("The chain").
:func:`verify_provenance` checks every link and raises :class:`ProvenanceInvalid` naming the first that failed.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securetrain.core import signed_documents
from securetrain.core.attestation.claims import workload_binding
from securetrain.core.attestation.tokens import AuthorityKeys
from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.release_policy import ReleaseDenied, ReleasePolicy, evaluate
from securetrain.core.sealed import KekPublicKey
from securetrain.core.sealed.errors import SealInputError
from securetrain.core.signed_documents import SignatureInvalid, key_id

log = logging.getLogger(__name__)

STATEMENT_SCHEMA = "securetrain.model-statement/v2"
TEE_SIGNATURE_ALGORITHM = "PS256"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STATEMENT_FIELDS = {
    "schema", "run_id", "sealed_model_sha256", "model_plaintext_sha256", "datasets", "hyperparameters", "metrics",
    "tee_log_head",
}  # fmt: skip
#: Present only for a model trained under a contract (:func:`model_statement`'s ``governance``).
_OPTIONAL_STATEMENT_FIELDS = {"governance"}


class ProvenanceInvalid(SecurityViolation):
    """A link of the model's provenance chain does not verify; the message names which."""


class RecipientKeyInvalid(ConfigurationError):
    """The export recipient's public key is not a PEM RSA public key of at least 2048 bits."""


def recipient_key(pem: bytes) -> KekPublicKey:
    """The export recipient's RSA public key (PEM SubjectPublicKeyInfo), named ``recipient:<thumbprint>``.

    An exported model is sealed exactly like a dataset, with this key in place of the KEK: the recipient
    opens it with ``securetrain unseal`` and their private key.
    """
    try:
        public_key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise RecipientKeyInvalid(f"the recipient key is not a PEM public key: {exc}") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise RecipientKeyInvalid(f"the recipient key is a {type(public_key).__name__}; an export needs an RSA key")
    try:
        probe = KekPublicKey("recipient", public_key)
        return KekPublicKey(f"recipient:{probe.thumbprint}", public_key)
    except SealInputError as exc:
        raise RecipientKeyInvalid(f"the recipient key cannot seal: {exc}") from None


@dataclass(frozen=True)
class DatasetDigest:
    """One dataset shard the TEE opened: where it was and the plaintext SHA-256 its sealed header carried."""

    blob: str
    plaintext_sha256: str

    def to_json(self) -> dict[str, str]:
        return {"blob": self.blob, "plaintext_sha256": self.plaintext_sha256}


def model_statement(
    *,
    run_id: str,
    sealed_model_sha256: str,
    model_plaintext_sha256: str,
    datasets: Sequence[DatasetDigest],
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, float],
    tee_log_head: Mapping[str, Any],
    governance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The statement the TEE signs about the model it trained (see the module documentation).

    ``tee_log_head`` is the final head of the job's TEE event log (``{"log_id", "seq", "head_hash"}``, see
    :mod:`securetrain.core.audit.tee_log`): signed here, it lets a verifier tell a complete audit trail from one
    rolled back or cut short. ``governance``, for a job under a contract: the contract's digest, the privacy
    spent (ε, δ, accountant) with the budget-ledger entry that recorded it, and the consumers' sealed copies.
    """
    for name, digest in [("sealed_model_sha256", sealed_model_sha256), ("model_plaintext_sha256", model_plaintext_sha256),
                         *((f"datasets[{i}]", d.plaintext_sha256) for i, d in enumerate(datasets))]:  # fmt: skip
        if not _SHA256.fullmatch(digest):
            raise ValueError(f"{name} is not a lowercase hex SHA-256: {digest!r}")
    if not datasets:
        raise ValueError("a model statement names at least one dataset shard")
    return {
        "schema": STATEMENT_SCHEMA,
        "run_id": run_id,
        "sealed_model_sha256": sealed_model_sha256,
        "model_plaintext_sha256": model_plaintext_sha256,
        "datasets": [d.to_json() for d in datasets],
        "hyperparameters": dict(hyperparameters),
        "metrics": dict(metrics),
        "tee_log_head": dict(tee_log_head),
        **({"governance": dict(governance)} if governance is not None else {}),
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str, what: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ProvenanceInvalid(f"{what} is not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ProvenanceInvalid(f"{what} is not base64url text") from None


_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)  # JWS PS256: salt as long as the hash


def sign_statement(private_key: rsa.RSAPrivateKey, statement: Mapping[str, Any]) -> dict[str, str]:
    """The TEE's signature over ``statement``: ``{"algorithm": "PS256", "value": base64url}``."""
    signature = private_key.sign(rfc8785.dumps(statement), _PSS, hashes.SHA256())
    return {"algorithm": TEE_SIGNATURE_ALGORITHM, "value": _b64url(signature)}


def rsa_public_key_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """The RSA public key of a JWK (``kty`` RSA, ``n``, ``e``)."""
    if jwk.get("kty") != "RSA":
        raise ProvenanceInvalid(f"the attested runtime key is a {jwk.get('kty')!r} key, not RSA")
    n = int.from_bytes(_unb64url(jwk.get("n", ""), "the runtime key's modulus"), "big")
    e = int.from_bytes(_unb64url(jwk.get("e", ""), "the runtime key's exponent"), "big")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise ProvenanceInvalid(f"the attested runtime key is not a valid RSA key: {exc}") from None


def verify_statement_signature(
    public_key: rsa.RSAPublicKey,
    statement: Mapping[str, Any],
    signature: Mapping[str, Any],
    *,
    what: str = "the model statement",
) -> None:
    """Check the TEE's signature over ``statement`` (``what`` names it in errors) with the attested runtime key."""
    if signature.get("algorithm") != TEE_SIGNATURE_ALGORITHM:
        raise ProvenanceInvalid(
            f"the TEE signature's algorithm is {signature.get('algorithm')!r}, not {TEE_SIGNATURE_ALGORITHM}"
        )
    value = _unb64url(signature.get("value", ""), "the TEE signature")
    try:
        public_key.verify(value, rfc8785.dumps(statement), _PSS, hashes.SHA256())
    except InvalidSignature:
        raise ProvenanceInvalid(
            f"the TEE signature over {what} does not verify with the key the attestation token carries: it was "
            "changed, or not signed by the attested TEE"
        ) from None


# --- the pipeline's signature ---------------------------------------------------------------------------------


def verify_manifest_signature(manifest: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    """Check that ``manifest`` carries a valid signature by the pipeline's ``public_key``."""
    try:
        signed_documents.verify(manifest, public_key, what="the model manifest", signer="the pipeline key")
    except SignatureInvalid as exc:
        raise ProvenanceInvalid(str(exc)) from None


# --- the attestation token ------------------------------------------------------------------------------------


class SigningKeys(Protocol):
    """An attestation authority's published signing keys by ``kid`` (``AuthorityKeys`` online, or a JWKS)."""

    def key(self, kid: str) -> rsa.RSAPublicKey: ...


class JwksKeys:
    """Signing keys from a JWKS document in the shape the attestation service publishes (``x5c`` certificates).

    For verifying offline, with a copy of the authority's ``/certs`` taken from a trusted source.
    """

    def __init__(self, document: Mapping[str, Any], source: str) -> None:
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        entries = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise ConfigurationError(f"{source} is not a JWKS document (an object with a 'keys' list)")
        for entry in entries:
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0], validate=True))
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ConfigurationError(f"{source} has a key without a valid x5c certificate: {exc}") from None
            public_key = cert.public_key()
            if isinstance(public_key, rsa.RSAPublicKey) and isinstance(entry.get("kid"), str):
                self._keys[entry["kid"]] = public_key
        self._source = source

    @classmethod
    def from_file(cls, path: Path) -> JwksKeys:
        try:
            return cls(json.loads(path.read_bytes()), str(path))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the JWKS {path}: {exc}") from None

    def key(self, kid: str) -> rsa.RSAPublicKey:
        try:
            return self._keys[kid]
        except KeyError:
            raise ProvenanceInvalid(f"the attestation token is signed with key {kid!r}, which {self._source} lacks") from None


def published_keys(verify: str | bool) -> Callable[[str], SigningKeys]:
    """The signing keys each issuer publishes (its OpenID metadata over TLS verified with ``verify``: a CA
    bundle path, or True for the system roots), fetched once per issuer. Call it only for an issuer the
    release policy trusts (:func:`verify_attestation_token` checks that first)."""
    fetched: dict[str, AuthorityKeys] = {}

    def keys_for(issuer: str) -> SigningKeys:
        if issuer not in fetched:
            fetched[issuer] = AuthorityKeys(issuer, verify=verify)
        return fetched[issuer]

    return keys_for


def verify_attestation_token(
    raw: str, policy: ReleasePolicy, keys_for: Callable[[str], SigningKeys]
) -> Mapping[str, Any]:
    """The claims of ``raw`` once its signature and its claims verify; :class:`ProvenanceInvalid` otherwise.

    The token is historical evidence here (the model was trained while it was valid), so its expiry is not
    checked; everything else is: RS256 by a key the issuer publishes (``keys_for(issuer)``), an issuer the
    release policy trusts, and claims (measurement, HOST_DATA, attestation-policy hash, debug off, a runtime
    key) that satisfy ``policy``.
    """
    try:
        header = jwt.get_unverified_header(raw)
        unverified = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ProvenanceInvalid(f"the attestation token is not a JWS: {exc}") from None
    if header.get("alg") != "RS256" or not isinstance(header.get("kid"), str):
        raise ProvenanceInvalid(f"the attestation token's header {header} is not RS256 with a kid")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or not policy.rules_for(issuer):
        raise ProvenanceInvalid(
            f"the attestation token was issued by {issuer!r}, not by an authority the release policy trusts"
        )
    try:
        claims = jwt.decode(
            raw, key=keys_for(issuer).key(header["kid"]), algorithms=["RS256"], issuer=issuer,
            options={"verify_exp": False, "verify_aud": False, "require": ["iss", "iat"]},
        )  # fmt: skip
    except jwt.InvalidSignatureError:
        raise ProvenanceInvalid(f"the attestation token's signature does not verify with {issuer}'s key") from None
    except jwt.PyJWTError as exc:
        raise ProvenanceInvalid(f"the attestation token is invalid: {exc}") from None
    try:
        evaluate(policy, claims)
    except ReleaseDenied as exc:
        raise ProvenanceInvalid(f"the attested TEE does not satisfy the release policy: {exc}") from None
    return claims


def runtime_key(claims: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """The one TEE key a validated token attests (``x-ms-runtime.keys``): what the TEE signs with."""
    runtime = claims.get("x-ms-runtime")
    keys = runtime.get("keys") if isinstance(runtime, Mapping) else None
    if not isinstance(keys, list) or len(keys) != 1 or not isinstance(keys[0], Mapping):
        raise ProvenanceInvalid("the attestation token does not carry exactly one runtime key (x-ms-runtime.keys)")
    return rsa_public_key_from_jwk(keys[0])


# --- the whole chain ------------------------------------------------------------------------------------------


def _check_statement_against(manifest: Mapping[str, Any], statement: Mapping[str, Any]) -> None:
    if not isinstance(statement, Mapping) or not _STATEMENT_FIELDS <= set(statement) <= _STATEMENT_FIELDS | _OPTIONAL_STATEMENT_FIELDS:
        raise ProvenanceInvalid("the model statement does not have the fields of a " + STATEMENT_SCHEMA)
    if statement["schema"] != STATEMENT_SCHEMA:
        raise ProvenanceInvalid(f"the model statement's schema is {statement['schema']!r}, not {STATEMENT_SCHEMA}")
    sealed, lineage = manifest["sealed_model"], manifest["lineage"]
    expected = {
        "run_id": lineage.get("run_id"),
        "sealed_model_sha256": sealed.get("sha256"),
        "model_plaintext_sha256": sealed.get("plaintext_sha256"),
    }
    for name, value in expected.items():
        if statement[name] != value:
            raise ProvenanceInvalid(f"the statement's {name} {statement[name]!r} is not the manifest's {value!r}")
    shards = (lineage.get("dataset") or {}).get("shards")
    if not isinstance(shards, list):
        raise ProvenanceInvalid("the manifest's lineage names no dataset shards")
    if manifest.get("tee_log_head") != statement["tee_log_head"]:
        raise ProvenanceInvalid(
            f"the manifest's TEE log head {manifest.get('tee_log_head')} is not the one the TEE signed "
            f"{statement['tee_log_head']}"
        )
    attested = [(d.get("blob"), d.get("plaintext_sha256")) for d in statement["datasets"]]
    recorded = [(s.get("blob"), s.get("plaintext_sha256")) for s in shards]
    if attested != recorded:
        raise ProvenanceInvalid(
            f"the dataset digests the TEE attested {attested} are not the manifest's dataset shards {recorded}"
        )


def verify_provenance(
    manifest: Mapping[str, Any],
    sealed_model_sha256: str,
    *,
    pipeline_key: Ed25519PublicKey,
    release_policy: ReleasePolicy,
    keys_for: Callable[[str], SigningKeys],
) -> list[str]:
    """Check every link of a model version's provenance; return what was checked, one line each.

    ``sealed_model_sha256`` is the digest of the sealed model as it is stored now.

    Raises:
        ProvenanceInvalid: the first link that failed, named.
    """
    checked = []
    sealed = manifest.get("sealed_model") or {}
    if sealed.get("sha256") != sealed_model_sha256:
        raise ProvenanceInvalid(
            f"the stored sealed model has SHA-256 {sealed_model_sha256}; the manifest says {sealed.get('sha256')}: "
            "the model was replaced or changed"
        )
    checked.append(f"sealed model digest {sealed_model_sha256} matches the manifest")
    verify_manifest_signature(manifest, pipeline_key)
    checked.append(f"manifest signed by the pipeline key {key_id(pipeline_key)[:16]}…")
    lineage = manifest.get("lineage") or {}
    policy_hash = lineage.get("release_policy_sha256")
    if policy_hash != release_policy.sha256:
        raise ProvenanceInvalid(
            f"the manifest names release policy {policy_hash}, but the policy given has SHA-256 {release_policy.sha256}"
        )
    provenance = manifest.get("provenance")
    if not isinstance(provenance, Mapping) or set(provenance) != {"statement", "tee_signature", "attestation_token"}:
        raise ProvenanceInvalid("the manifest has no provenance {statement, tee_signature, attestation_token}")
    claims = verify_attestation_token(provenance["attestation_token"], release_policy, keys_for)
    checked.append(
        f"attestation token signed by {claims['iss']}; {workload_binding(claims)} satisfy release policy {policy_hash}"
    )
    statement = provenance["statement"]
    verify_statement_signature(runtime_key(claims), statement, provenance["tee_signature"])
    checked.append(f"model statement signed by the attested TEE key {claims['x-ms-runtime']['keys'][0].get('kid')}")
    _check_statement_against(manifest, statement)
    checked.append("the statement's run, model and dataset digests match the manifest")
    log.info("provenance of %s version %s verified", manifest.get("name"), manifest.get("version"))
    return checked
