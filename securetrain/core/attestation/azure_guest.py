"""MAA's ``POST /attest/AzureGuest`` request (api-version 2022-08-01): built by the TEE, read by the attestation service.

The shape is the one Azure's guest attestation library sends (``Azure/cvm-attestation-tools``,
``cvm-attestation/src``: ``attestation_client.py``, ``attestation_types.py``, ``isolation.py``; protocol version
2.0). Base64 is the standard alphabet, base64url is unpadded, as that library writes them::

    {"AttestationInfo": base64url(JSON {
        "AttestationProtocolVersion": "2.0",
        "OSType": base64("Linux"), "OSDistro": base64(...), "OSVersionMajor": "22", "OSVersionMinor": "04",
        "OSBuild": base64(...),
        "TcgLogs": base64(the TCG2 boot event log),
        "ClientPayload": {"nonce": base64(the quote's qualifying data), "runtime-key": JWK},
        "TpmInfo": {"AikCert": base64(DER), "AikPub": base64(ReadPublic response),
                    "PcrQuote": base64(TPMS_ATTEST), "PcrSignature": base64(RSASSA signature),
                    "PcrSet": [0, 1, ...], "PCRs": [{"Index": 0, "Digest": base64(SHA-256 PCR)}, ...]},
        "IsolationInfo": {"Type": "SevSnp", "Evidence": {
            "Proof": base64url(JSON {"SnpReport": base64url(report), "VcekCertChain": base64url(PEM chain)}),
            "RunTimeData": base64url(the HCL report's runtime claims)}}})}

Where this product's use differs from Azure's library, on purpose:

- **Freshness.** Azure's library quotes without qualifying data: it relies on MAA encrypting the token to a
  TPM-bound ephemeral key (``EncKeyPub`` with its certification by the AK), so only the attested vTPM can read
  it. Here the quote's qualifying data is the verifier's nonce, sent in ``ClientPayload`` as ``nonce``; the
  service checks the quote against it and spends it once. ``EncKeyPub``, ``EncKeyCertifyInfo`` and
  ``EncKeyCertifyInfoSignature`` are therefore refused rather than carried unused.
- **The key to release to.** ``ClientPayload.runtime-key`` is the TEE's runtime key as a JWK; the guest bound
  it by writing SHA-256 of its PEM (SubjectPublicKeyInfo, as pyca/cryptography writes it, without the final line
  break: :func:`runtime_key_pem`) and 32 zero bytes as HCL user data, which the runtime claims carry and the chip
  signs (check ``user-data-key``).
- **The contract.** ``ClientPayload.contract`` (optional) is the digest of the contract the TEE enforces, for a
  release policy to require; ``ClientPayload`` is the guest's own JSON, which MAA repeats in the token.

Everything is read strictly: a missing or unknown field, a wrong type, non-canonical base64, a ``PcrSet`` that
is not the ``PCRs``' indexes is refused with check ``azure-guest-request``, naming the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

from securetrain.core.azure_cvm.ak_public import AkPublic
from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.azure_cvm.hcl import RuntimeClaims
from securetrain.core.azure_cvm.tpm import MAX_EXTRA_DATA, PCR_COUNT, SHA256_SIZE
from securetrain.core.contracts.base import Contract, Items, Omittable, canonical_base64, first_error, refusal
from securetrain.core.contracts.job_spec import ContractDigest
from securetrain.core.json_input import JsonInputError, read_json_object

PROTOCOL_VERSION = "2.0"
#: The request with a boot log of a few hundred KiB fits; more is not a request a guest made.
MAX_REQUEST_BYTES = 2 << 20
_MIN_RUNTIME_KEY_BITS = 2048


def _base64url(value: Any) -> bytes:
    """Canonical unpadded base64url, as Azure's library writes it."""
    if not isinstance(value, str):
        raise refusal("must be a base64url string")
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise refusal("is not valid base64url") from None
    if b64url(decoded) != value:
        raise refusal("is not canonical unpadded base64url")
    return decoded


def _non_empty(value: bytes) -> bytes:
    if not value:
        raise refusal("is empty")
    return value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


Base64 = Annotated[bytes, BeforeValidator(canonical_base64)]
Base64Url = Annotated[bytes, BeforeValidator(_base64url)]
_Nonce = Annotated[bytes, BeforeValidator(canonical_base64), Field(min_length=1, max_length=MAX_EXTRA_DATA)]
_PcrIndex = Annotated[int, Field(ge=0, lt=PCR_COUNT)]


def _jwk_uint(value: Any) -> int:
    if not isinstance(value, str):
        raise refusal("must be a base64url string")
    raw = _base64url(value)
    if not raw or raw[0] == 0:
        raise refusal("is not an unsigned integer without leading zero octets")
    return int.from_bytes(raw, "big")


class RuntimeKeyJwk(Contract):
    """The TEE's runtime key, an RSA public key as a JWK (RFC 7517/7518), as ``x-ms-runtime.keys`` lists it."""

    kty: Literal["RSA"]
    n: Annotated[int, BeforeValidator(_jwk_uint)]
    e: Annotated[int, BeforeValidator(_jwk_uint)]
    kid: Omittable[Annotated[str, Field(min_length=1, max_length=256)]]
    key_ops: Omittable[Items[Literal["encrypt", "wrapKey"]]]

    @classmethod
    def of(cls, key: rsa.RSAPublicKey, kid: str | None = None) -> RuntimeKeyJwk:
        numbers = key.public_numbers()
        jwk = {"kty": "RSA", "n": _jwk_b64(numbers.n), "e": _jwk_b64(numbers.e), "key_ops": ["encrypt"]}
        return cls.model_validate(jwk if kid is None else {**jwk, "kid": kid})

    def public_key(self) -> rsa.RSAPublicKey:
        try:
            key = rsa.RSAPublicNumbers(self.e, self.n).public_key()
        except ValueError as exc:
            raise CvmEvidenceError(Check.REQUEST, f"ClientPayload.runtime-key is not an RSA public key: {exc}") from None
        if key.key_size < _MIN_RUNTIME_KEY_BITS:
            raise CvmEvidenceError(Check.REQUEST, f"ClientPayload.runtime-key is RSA-{key.key_size}, below RSA-{_MIN_RUNTIME_KEY_BITS}")
        return key

    def to_jwk(self) -> dict[str, Any]:
        document: dict[str, Any] = {"kty": "RSA", "n": _jwk_b64(self.n), "e": _jwk_b64(self.e)}
        if self.kid is not None:
            document["kid"] = self.kid
        if self.key_ops is not None:
            document["key_ops"] = list(self.key_ops)
        return document


def runtime_key_pem(key: rsa.RSAPublicKey) -> str:
    """The text whose SHA-256 the guest writes as HCL user data to bind ``key``: its SubjectPublicKeyInfo PEM as
    pyca/cryptography writes it, without the final line break (as the guest of the captured evidence wrote it)."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode().rstrip("\n")


def user_data_for(key: rsa.RSAPublicKey) -> bytes:
    """The 64 bytes of HCL user data that bind ``key``: SHA-256 of :func:`runtime_key_pem`, then 32 zero bytes."""
    return hashlib.sha256(runtime_key_pem(key).encode()).digest() + bytes(32)


#: ``x-ms-attestation-type`` of the tokens ``/attest/AzureGuest`` issues.
AZURE_VM = "azurevm"


def quote_nonce(nonce: str) -> bytes:
    """What a confidential VM's quote carries as qualifying data for the verifier's ``nonce``: its SHA-256 (a vTPM
    takes at most one digest there, and a nonce may be longer)."""
    return hashlib.sha256(nonce.encode()).digest()


def token_nonce(nonce: str, claims: Mapping[str, Any]) -> str:
    """The ``nonce`` claim a token with ``claims`` carries when it answers ``nonce``: an AzureGuest token the quote's
    qualifying data (base64, :func:`quote_nonce`), any other the nonce itself."""
    return _b64(quote_nonce(nonce)) if claims.get("x-ms-attestation-type") == AZURE_VM else nonce


def _jwk_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


# The models spell fields as the wire does, so that a refusal names the field as sent.
class ClientPayload(Contract):
    """What the guest adds to its evidence; MAA echoes it as ``x-ms-runtime.client-payload``."""

    nonce: _Nonce
    runtime_key: RuntimeKeyJwk = Field(alias="runtime-key")
    #: The digest of the contract the TEE enforces, for a release policy to require (docs/governance.md).
    contract: Omittable[ContractDigest]


class Pcr(Contract):
    Index: _PcrIndex
    Digest: Annotated[Base64, Field(min_length=SHA256_SIZE, max_length=SHA256_SIZE)]


class TpmInfo(Contract):
    AikCert: Annotated[Base64, AfterValidator(_non_empty)]
    AikPub: Annotated[Base64, AfterValidator(_non_empty)]
    PcrQuote: Annotated[Base64, AfterValidator(_non_empty)]
    PcrSignature: Annotated[Base64, AfterValidator(_non_empty)]
    PcrSet: Items[_PcrIndex]
    PCRs: Items[Pcr]
    #: Azure's TPM-bound ephemeral key, to which MAA encrypts its answer: refused here (module docstring).
    EncKeyPub: Omittable[str]
    EncKeyCertifyInfo: Omittable[str]
    EncKeyCertifyInfoSignature: Omittable[str]


class SnpProof(Contract):
    """The JSON inside ``IsolationInfo.Evidence.Proof``."""

    SnpReport: Base64Url
    VcekCertChain: Base64Url


class IsolationEvidence(Contract):
    Proof: Base64Url
    RunTimeData: Base64Url


class IsolationInfo(Contract):
    Type: Literal["SevSnp"]
    Evidence: IsolationEvidence


class AttestationInfo(Contract):
    AttestationProtocolVersion: Literal["2.0"]
    OSType: Base64
    OSDistro: Base64
    OSVersionMajor: str
    OSVersionMinor: str
    OSBuild: Base64
    TcgLogs: Base64
    ClientPayload: ClientPayload
    TpmInfo: TpmInfo
    IsolationInfo: IsolationInfo


class AzureGuestRequest(Contract):
    AttestationInfo: Base64Url


@dataclass(frozen=True)
class GuestOs:
    """What the guest says its operating system is (carried, not verified: MAA derives OS claims from the boot log)."""

    type: str
    distro: str
    version_major: str
    version_minor: str
    build: str


@dataclass(frozen=True)
class AzureGuestEvidence:
    """A read AzureGuest request: the evidence to verify, and what the guest sent beside it."""

    evidence: CvmEvidence
    client_payload: Mapping[str, Any]
    runtime_key: RuntimeKeyJwk
    tcg_log: bytes

    @property
    def nonce_text(self) -> str:
        """The nonce as sent (base64)."""
        return _b64(self.evidence.nonce)


def azure_guest_request(evidence: CvmEvidence, runtime_key: rsa.RSAPublicKey, guest_os: GuestOs, *,
                        tcg_log: bytes = b"", runtime_key_id: str | None = None,
                        contract: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The request for ``evidence`` (its quote made over ``evidence.nonce``) and the runtime key the guest bound.

    ``AikPub`` is the public area of Azure's AK template for the runtime claims' ``HCLAkPub`` — what the
    vTPM's ReadPublic of handle 0x81000003 answers, since Azure's AK is made from that one template.
    """
    ak_public = AkPublic.for_key(RuntimeClaims.from_bytes(evidence.runtime_claims).ak_public_key)
    client_payload = {"nonce": _b64(evidence.nonce), "runtime-key": RuntimeKeyJwk.of(runtime_key, runtime_key_id).to_jwk()}
    if contract is not None:
        client_payload["contract"] = contract
    proof = json.dumps({"SnpReport": b64url(evidence.snp_report), "VcekCertChain": b64url(evidence.platform_certificates)})
    info = {
        "AttestationProtocolVersion": PROTOCOL_VERSION,
        "OSType": _b64(guest_os.type.encode()),
        "OSDistro": _b64(guest_os.distro.encode()),
        "OSVersionMajor": guest_os.version_major,
        "OSVersionMinor": guest_os.version_minor,
        "OSBuild": _b64(guest_os.build.encode()),
        "TcgLogs": _b64(tcg_log),
        "ClientPayload": client_payload,
        "TpmInfo": {
            "AikCert": _b64(evidence.ak_certificate),
            "AikPub": _b64(ak_public.to_bytes()),
            "PcrQuote": _b64(evidence.quote_attested),
            "PcrSignature": _b64(evidence.quote_signature),
            "PcrSet": list(evidence.pcrs),
            "PCRs": [{"Index": index, "Digest": _b64(digest)} for index, digest in evidence.pcrs.items()],
        },
        "IsolationInfo": {
            "Type": "SevSnp",
            "Evidence": {"Proof": b64url(proof.encode()), "RunTimeData": b64url(evidence.runtime_claims)},
        },
    }
    return {"AttestationInfo": b64url(json.dumps(info).encode())}


def _validated(model: type[Contract], raw: bytes, where: str) -> Any:
    try:
        document = read_json_object(raw, max_bytes=MAX_REQUEST_BYTES, what=where)
    except JsonInputError as exc:
        raise CvmEvidenceError(Check.REQUEST, str(exc)) from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        path, reason = first_error(exc)
        raise CvmEvidenceError(Check.REQUEST, f"{where}: {path or 'the object'}: {reason}") from None


def read_azure_guest_request(body: bytes) -> AzureGuestEvidence:
    """Read a request body (shape in the module docstring) into the evidence the verifier checks."""
    request = _validated(AzureGuestRequest, body, "the request")
    info: AttestationInfo = _validated(AttestationInfo, request.AttestationInfo, "AttestationInfo")
    tpm = info.TpmInfo
    for field in ("EncKeyPub", "EncKeyCertifyInfo", "EncKeyCertifyInfoSignature"):
        if getattr(tpm, field) is not None:
            raise CvmEvidenceError(
                Check.REQUEST, f"AttestationInfo: TpmInfo.{field}: a TPM ephemeral key is not taken here; freshness "
                "is the quote's nonce (ClientPayload.nonce) and the token is returned in the clear",
            )  # fmt: skip
    indexes = [pcr.Index for pcr in tpm.PCRs]
    if list(tpm.PcrSet) != indexes or len(set(indexes)) != len(indexes):
        raise CvmEvidenceError(Check.REQUEST, "AttestationInfo: TpmInfo.PcrSet is not the PCRs' indexes, each once, in order")
    proof: SnpProof = _validated(SnpProof, info.IsolationInfo.Evidence.Proof, "IsolationInfo.Evidence.Proof")
    payload = info.ClientPayload
    public_key_pem = runtime_key_pem(payload.runtime_key.public_key())
    evidence = CvmEvidence(
        snp_report=proof.SnpReport,
        runtime_claims=info.IsolationInfo.Evidence.RunTimeData,
        quote_attested=tpm.PcrQuote,
        quote_signature=tpm.PcrSignature,
        pcrs=MappingProxyType({pcr.Index: pcr.Digest for pcr in sorted(tpm.PCRs, key=lambda pcr: pcr.Index)}),
        ak_certificate=tpm.AikCert,
        nonce=payload.nonce,
        platform_certificates=proof.VcekCertChain,
        ak_public=tpm.AikPub,
        public_key_pem=public_key_pem,
    )
    client_payload = {"nonce": _b64(payload.nonce), "runtime-key": payload.runtime_key.to_jwk()}
    if payload.contract is not None:
        client_payload["contract"] = payload.contract
    return AzureGuestEvidence(evidence, MappingProxyType(client_payload), payload.runtime_key, info.TcgLogs)
