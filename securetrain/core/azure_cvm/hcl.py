"""The HCL report an Azure confidential VM's paravisor leaves in vTPM NV index ``0x01400001``, and its runtime claims.

Layout (Microsoft's OpenHCL, ``openhcl_attestation_protocol::igvm_attest::get``: ``IgvmAttestRequestBase``
with request version 1, "the stable structure exposed to the guest via NV index"; all integers little-endian):

====== ===== =====================================================================================
offset size  field
====== ===== =====================================================================================
0      4     signature ``HCLA``
4      4     header version: 1 (Azure's paravisor, as in the captured evidence) or 2 (OpenHCL)
8      4     report size: every byte from offset 0 to the end of the runtime claims
12     4     request type: 2, ``AK_CERT_REQUEST`` (the report is made when the vTPM's AK is certified)
16     4     status: 0
20     12    reserved: 0
32     1184  the SEV-SNP ATTESTATION_REPORT (:mod:`securetrain.core.snp.report`)
1216   4     request data size: these 20 bytes plus the runtime claims
1220   4     request data version: 1
1224   4     report type: 2, SNP (VBS, TDX, TVM and CCA reports are refused)
1228   4     report data hash type: 1, SHA-256
1232   4     runtime claims size
1236   n     the runtime claims: a JSON document, UTF-8
====== ===== =====================================================================================

The SNP report's REPORT_DATA is SHA-256 of the runtime claims' bytes followed by 32 zero bytes: the
chip signs the claims, and with them ``HCLAkPub``, the key the vTPM signs quotes with. Reading the NV
index returns the whole index, so what follows the report (up to the index size) must be zero.

Runtime claims (``runtime_claims::RuntimeClaims``): ``keys``, the vTPM's attestation key ``HCLAkPub``
(``key_ops`` ``["sign"]``) and endorsement key ``HCLEkPub`` (``["encrypt"]``) as RSA JWKs;
``vm-configuration``; ``user-data``, the 64 bytes the guest last wrote to NV index ``0x01400002``, as hex
(absent when it wrote none). Everything is refused but the fields Microsoft defines, with their types:
a verifier that skips claims it does not understand cannot say what it approved.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AfterValidator, ConfigDict, Field, ValidationError

from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.contracts.base import Contract, Items, Omittable, first_error, refusal
from securetrain.core.errors import ConfigurationError
from securetrain.core.json_input import JsonInputError, read_json_object
from securetrain.core.snp.report import REPORT_SIZE

SIGNATURE = b"HCLA"
HEADER_VERSIONS = (1, 2)
#: The header version Azure's paravisor wrote in the captured evidence; what :meth:`HclReport.build` writes.
AZURE_HEADER_VERSION = 1
REQUEST_TYPE_AK_CERT = 2
REQUEST_DATA_VERSION = 1
REPORT_TYPE_SNP = 2
HASH_TYPE_SHA256 = 1

_HEADER = struct.Struct("<4sIIII12s")
_REQUEST_DATA = struct.Struct("<IIIII")
SNP_REPORT_OFFSET = _HEADER.size
REQUEST_DATA_OFFSET = SNP_REPORT_OFFSET + REPORT_SIZE
RUNTIME_CLAIMS_OFFSET = REQUEST_DATA_OFFSET + _REQUEST_DATA.size
#: Far above the ~1.1 KiB the paravisor writes, and below what one JSON read should be asked to hold.
MAX_RUNTIME_CLAIMS_SIZE = 64 << 10

AK_KEY_ID = "HCLAkPub"
EK_KEY_ID = "HCLEkPub"
USER_DATA_SIZE = 64
_MIN_RSA_BITS = 2048


def _refuse_layout(reason: str) -> CvmEvidenceError:
    return CvmEvidenceError(Check.HCL_REPORT_LAYOUT, reason)


@dataclass(frozen=True)
class HclReport:
    """An HCL report: the SNP report and the runtime claims it binds, as the exact bytes they arrived in."""

    header_version: int
    snp_report: bytes
    runtime_claims: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> HclReport:
        """Read an HCL report as read from its NV index: the report, then zero bytes to the end of the index."""
        if len(data) < RUNTIME_CLAIMS_OFFSET:
            raise _refuse_layout(f"{len(data)} bytes is shorter than the {RUNTIME_CLAIMS_OFFSET} bytes before the runtime claims")
        signature, version, report_size, request_type, status, reserved = _HEADER.unpack_from(data)
        if signature != SIGNATURE:
            raise _refuse_layout(f"signature is {signature!r}, not {SIGNATURE!r}")
        if version not in HEADER_VERSIONS:
            raise _refuse_layout(f"header version {version} is not one of {HEADER_VERSIONS}")
        if request_type != REQUEST_TYPE_AK_CERT:
            raise _refuse_layout(f"request type {request_type} is not {REQUEST_TYPE_AK_CERT} (AK_CERT_REQUEST)")
        if status != 0:
            raise _refuse_layout(f"status is {status}, not 0")
        if any(reserved):
            raise _refuse_layout("reserved header bytes 20-31 are not zero")
        data_size, request_version, report_type, hash_type, claims_size = _REQUEST_DATA.unpack_from(
            data, REQUEST_DATA_OFFSET
        )
        if request_version != REQUEST_DATA_VERSION:
            raise _refuse_layout(f"request data version {request_version} is not {REQUEST_DATA_VERSION}")
        if report_type != REPORT_TYPE_SNP:
            raise _refuse_layout(f"report type {report_type} is not {REPORT_TYPE_SNP} (an SEV-SNP report)")
        if hash_type != HASH_TYPE_SHA256:
            raise _refuse_layout(f"report data hash type {hash_type} is not {HASH_TYPE_SHA256} (SHA-256)")
        if not 0 < claims_size <= MAX_RUNTIME_CLAIMS_SIZE:
            raise _refuse_layout(f"runtime claims size {claims_size} is not between 1 and {MAX_RUNTIME_CLAIMS_SIZE}")
        if data_size != _REQUEST_DATA.size + claims_size:
            raise _refuse_layout(
                f"request data size {data_size} is not {_REQUEST_DATA.size} + the runtime claims size {claims_size}"
            )
        end = RUNTIME_CLAIMS_OFFSET + claims_size
        if report_size != end:
            raise _refuse_layout(f"report size {report_size} is not {REQUEST_DATA_OFFSET} + request data size {data_size}")
        if end > len(data):
            raise _refuse_layout(f"report size {report_size} is beyond the {len(data)} bytes read")
        if any(data[end:]):
            raise _refuse_layout(f"bytes after the report (offset {end} onwards) are not zero")
        return cls(
            header_version=version,
            snp_report=bytes(data[SNP_REPORT_OFFSET:REQUEST_DATA_OFFSET]),
            runtime_claims=bytes(data[RUNTIME_CLAIMS_OFFSET:end]),
        )

    @classmethod
    def build(cls, snp_report: bytes, runtime_claims: bytes) -> HclReport:
        """The report a paravisor makes from an SNP report whose REPORT_DATA binds ``runtime_claims``.

        The binding itself (REPORT_DATA = SHA-256(runtime_claims) ‖ 32 zero bytes,
        :func:`securetrain.core.attestation.maa.report_data_for`) is the SNP report's, made before it is signed.
        """
        if len(snp_report) != REPORT_SIZE:
            raise ConfigurationError(f"an SNP report is {REPORT_SIZE} bytes, not {len(snp_report)}")
        if not 0 < len(runtime_claims) <= MAX_RUNTIME_CLAIMS_SIZE:
            raise ConfigurationError(f"runtime claims must be 1 to {MAX_RUNTIME_CLAIMS_SIZE} bytes, not {len(runtime_claims)}")
        return cls(header_version=AZURE_HEADER_VERSION, snp_report=bytes(snp_report), runtime_claims=bytes(runtime_claims))

    def to_bytes(self) -> bytes:
        """The report's bytes (without NV padding); ``from_bytes(b).to_bytes()`` is ``b`` less its zero tail."""
        claims_size = len(self.runtime_claims)
        data_size = _REQUEST_DATA.size + claims_size
        header = _HEADER.pack(SIGNATURE, self.header_version, REQUEST_DATA_OFFSET + data_size, REQUEST_TYPE_AK_CERT, 0, bytes(12))
        request_data = _REQUEST_DATA.pack(data_size, REQUEST_DATA_VERSION, REPORT_TYPE_SNP, HASH_TYPE_SHA256, claims_size)
        return header + self.snp_report + request_data + self.runtime_claims


def _b64url_uint(text: str) -> str:
    """An RSA JWK integer (RFC 7518 section 6.3.1): canonical unpadded base64url, no leading zero octet."""
    try:
        value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise refusal("is not base64url") from None
    if not value or value[0] == 0 or base64.urlsafe_b64encode(value).rstrip(b"=").decode() != text:
        raise refusal("is not a canonical unpadded base64url unsigned integer")
    return text


_Base64UrlUInt = Annotated[str, AfterValidator(_b64url_uint)]


def _b64url(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class RsaJwk(Contract):
    """One key of the runtime claims: an RSA public key as a JWK."""

    kid: Literal["HCLAkPub", "HCLEkPub"]
    key_ops: Items[Literal["sign", "encrypt"]]
    kty: Literal["RSA"]
    e: _Base64UrlUInt
    n: _Base64UrlUInt

    @classmethod
    def from_public_key(cls, kid: str, key_ops: tuple[str, ...], key: rsa.RSAPublicKey) -> RsaJwk:
        numbers = key.public_numbers()
        return cls.model_validate({"kid": kid, "key_ops": key_ops, "kty": "RSA", "e": _b64url(numbers.e), "n": _b64url(numbers.n)})

    def public_key(self) -> rsa.RSAPublicKey:
        """The key; at least RSA-2048, as a vTPM's AK and EK are."""
        def integer(text: str) -> int:
            return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

        try:
            key = rsa.RSAPublicNumbers(integer(self.e), integer(self.n)).public_key()
        except ValueError as exc:
            raise CvmEvidenceError(Check.RUNTIME_CLAIMS, f"key {self.kid} is not an RSA public key: {exc}") from None
        if key.key_size < _MIN_RSA_BITS:
            raise CvmEvidenceError(Check.RUNTIME_CLAIMS, f"key {self.kid} is RSA-{key.key_size}, below RSA-{_MIN_RSA_BITS}")
        return key


class VmgsProvisioner(Contract):
    """Who provisioned the VM's guest state file (OpenHCL only)."""

    id: str
    signer: str


class VmConfiguration(Contract):
    """``vm-configuration``: the VM's settings, as the paravisor states them.

    The fields Azure's paravisor writes (the captured evidence) are required; those only OpenHCL writes
    are optional.
    """

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    current_time: Omittable[int] = Field(alias="current-time")
    root_cert_thumbprint: Omittable[str] = Field(alias="root-cert-thumbprint")
    console_enabled: bool = Field(alias="console-enabled")
    interactive_console_enabled: Omittable[bool] = Field(alias="interactive-console-enabled")
    secure_boot: bool = Field(alias="secure-boot")
    tpm_enabled: bool = Field(alias="tpm-enabled")
    tpm_persisted: Omittable[bool] = Field(alias="tpm-persisted")
    filtered_vpci_devices_allowed: Omittable[bool] = Field(alias="filtered-vpci-devices-allowed")
    vm_unique_id: str = Field(alias="vmUniqueId")
    vmgs_provisioner: Omittable[VmgsProvisioner] = Field(alias="vmgs-provisioner")
    hardware_sealing_policy: Omittable[Literal["none", "hash", "signer"]] = Field(alias="hardware-sealing-policy")


def _user_data(text: str) -> str:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise refusal("is not hex") from None
    if len(value) != USER_DATA_SIZE or len(text) != 2 * USER_DATA_SIZE:
        raise refusal(f"is not {USER_DATA_SIZE} bytes of hex")
    return text


class _RuntimeClaimsDocument(Contract):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    keys: Items[RsaJwk]
    vm_configuration: VmConfiguration = Field(alias="vm-configuration")
    user_data: Omittable[Annotated[str, AfterValidator(_user_data)]] = Field(alias="user-data")


_KEY_OPS = {AK_KEY_ID: ("sign",), EK_KEY_ID: ("encrypt",)}


@dataclass(frozen=True)
class RuntimeClaims:
    """The runtime claims the SNP report binds: the bytes as bound, and what they say."""

    raw: bytes
    ak_public_key: rsa.RSAPublicKey
    ek_public_key: rsa.RSAPublicKey
    vm_configuration: VmConfiguration
    user_data: bytes | None

    @classmethod
    def from_bytes(cls, raw: bytes) -> RuntimeClaims:
        """Read the claims as bound: strict JSON, Microsoft's fields only, exactly one AK and one EK."""
        try:
            document = read_json_object(raw, max_bytes=MAX_RUNTIME_CLAIMS_SIZE, what="the runtime claims")
            # By the wire names only: the Python names are for building claims, never accepted from bytes.
            claims = _RuntimeClaimsDocument.model_validate(document, by_alias=True, by_name=False)
        except JsonInputError as exc:
            raise CvmEvidenceError(Check.RUNTIME_CLAIMS, str(exc)) from None
        except ValidationError as exc:
            path, reason = first_error(exc)
            raise CvmEvidenceError(Check.RUNTIME_CLAIMS, f"{path or 'the document'}: {reason}") from None
        keys: dict[str, RsaJwk] = {}
        for jwk in claims.keys:
            if jwk.kid in keys:
                raise CvmEvidenceError(Check.RUNTIME_CLAIMS, f"key {jwk.kid} appears twice")
            if jwk.key_ops != _KEY_OPS[jwk.kid]:
                raise CvmEvidenceError(
                    Check.RUNTIME_CLAIMS, f"key {jwk.kid} has key_ops {list(jwk.key_ops)}, not {list(_KEY_OPS[jwk.kid])}"
                )
            keys[jwk.kid] = jwk
        if set(keys) != set(_KEY_OPS):
            raise CvmEvidenceError(Check.RUNTIME_CLAIMS, f"keys are {sorted(keys)}, not {AK_KEY_ID} and {EK_KEY_ID}")
        return cls(
            raw=bytes(raw),
            ak_public_key=keys[AK_KEY_ID].public_key(),
            ek_public_key=keys[EK_KEY_ID].public_key(),
            vm_configuration=claims.vm_configuration,
            user_data=None if claims.user_data is None else bytes.fromhex(claims.user_data),
        )

    @classmethod
    def build(
        cls,
        *,
        ak_public_key: rsa.RSAPublicKey,
        ek_public_key: rsa.RSAPublicKey,
        vm_configuration: VmConfiguration,
        user_data: bytes,
    ) -> RuntimeClaims:
        """The claims a paravisor writes: compact JSON in Microsoft's field order, user data as upper-case hex
        (as Azure's paravisor writes it)."""
        if len(user_data) != USER_DATA_SIZE:
            raise ConfigurationError(f"user data is {USER_DATA_SIZE} bytes, not {len(user_data)}")
        document = _RuntimeClaimsDocument(
            keys=(
                RsaJwk.from_public_key(AK_KEY_ID, _KEY_OPS[AK_KEY_ID], ak_public_key),
                RsaJwk.from_public_key(EK_KEY_ID, _KEY_OPS[EK_KEY_ID], ek_public_key),
            ),
            vm_configuration=vm_configuration,
            user_data=user_data.hex().upper(),
        )
        raw = json.dumps(document.model_dump(mode="json"), separators=(",", ":")).encode()
        return cls.from_bytes(raw)

    def to_bytes(self) -> bytes:
        """The claims' bytes, as bound."""
        return self.raw

    def to_json(self) -> dict[str, Any]:
        """The claims as the JSON they are (what MAA puts in ``x-ms-runtime``)."""
        return json.loads(self.raw)

    @property
    def vm_unique_id(self) -> str:
        """The VM's id (``vmUniqueId``): what MAA reports as ``x-ms-azurevm-vmid``."""
        return self.vm_configuration.vm_unique_id

