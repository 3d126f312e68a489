"""The vTPM attestation key's public area, as Azure's guest attestation library sends it (``TpmInfo.AikPub``).

Azure's library reads the AK at persistent handle ``0x81000003`` with TPM2_ReadPublic and sends the response
parameters as they are marshalled (TCG TPM 2.0 Library, Part 3, ReadPublic; Part 2 for the structures)::

    TPM2B_PUBLIC outPublic       size u16, then TPMT_PUBLIC
    TPM2B_NAME   name            nameAlg u16 ‖ H(TPMT_PUBLIC)
    TPM2B_NAME   qualifiedName   nameAlg u16 ‖ H(qualifiedName of the parent ‖ name)

    TPMT_PUBLIC  type u16 = TPM_ALG_RSA, nameAlg u16 = SHA-256, objectAttributes u32, authPolicy TPM2B_DIGEST,
                 TPMS_RSA_PARMS {symmetric u16 = TPM_ALG_NULL, scheme u16 = RSASSA then hashAlg u16 = SHA-256,
                 keyBits u16, exponent u32 (0: 65537)}, unique TPM2B_PUBLIC_KEY_RSA (the modulus)

Only Azure's AK template is accepted — an RSA restricted signing key, RSASSA with SHA-256, made by the TPM
(``fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | sign``), no auth policy,
a primary key of the endorsement hierarchy (openvmm's ``ak_pub_template``; the captured evidence's quote names
exactly this key as its ``qualifiedSigner``). Anything else, or a byte left over, is refused with check
``ak-public``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.azure_cvm.errors import Check
from securetrain.core.azure_cvm.tpm import SHA256_SIZE, TPM_ALG_RSASSA, TPM_ALG_SHA256, Cursor, tpm2b

TPM_ALG_RSA = 0x0001
TPM_ALG_NULL = 0x0010
#: TPMA_OBJECT bits of Azure's AK: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA, restricted, sign.
AK_ATTRIBUTES = 0x00000002 | 0x00000010 | 0x00000020 | 0x00000040 | 0x00000400 | 0x00010000 | 0x00040000
#: The endorsement hierarchy's handle: the qualified name of its primary keys' parent.
TPM_RH_ENDORSEMENT = 0x4000000B
_AK_BITS = 2048
_DEFAULT_EXPONENT = 65537
_MAX_PUBLIC_AREA = 1024


def _name(data: bytes) -> bytes:
    return struct.pack(">H", TPM_ALG_SHA256) + hashlib.sha256(data).digest()


@dataclass(frozen=True)
class AkPublic:
    """The AK's public key, and the TPM names that identify it (its name, and its qualified name as a quote's
    ``qualifiedSigner`` gives it)."""

    public_key: rsa.RSAPublicKey
    name: bytes
    qualified_name: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> AkPublic:
        """Read a ReadPublic response: Azure's AK template, names consistent with the public area."""
        cursor = Cursor(data, "AikPub", Check.AK_PUBLIC)
        area = cursor.tpm2b("outPublic", _MAX_PUBLIC_AREA)
        name = cursor.tpm2b("name", 2 + SHA256_SIZE)
        qualified_name = cursor.tpm2b("qualifiedName", 2 + SHA256_SIZE)
        cursor.finish()
        public_key = _read_public_area(area)
        if name != _name(area):
            raise cursor.refuse("name is not the SHA-256 name of the public area")
        if qualified_name != _name(struct.pack(">I", TPM_RH_ENDORSEMENT) + name):
            raise cursor.refuse("qualifiedName is not that of a primary key of the endorsement hierarchy")
        return cls(public_key, name, qualified_name)

    @classmethod
    def for_key(cls, public_key: rsa.RSAPublicKey) -> AkPublic:
        """The AK a vTPM makes from Azure's template for ``public_key`` (what ReadPublic answers for it)."""
        name = _name(_public_area(public_key))
        return cls(public_key, name, _name(struct.pack(">I", TPM_RH_ENDORSEMENT) + name))

    def to_bytes(self) -> bytes:
        """The ReadPublic response :meth:`from_bytes` reads."""
        return tpm2b(_public_area(self.public_key)) + tpm2b(self.name) + tpm2b(self.qualified_name)


def _public_area(public_key: rsa.RSAPublicKey) -> bytes:
    """TPMT_PUBLIC of Azure's AK template for ``public_key``."""
    if public_key.key_size != _AK_BITS:
        raise ValueError(f"Azure's AK is RSA-{_AK_BITS}, not RSA-{public_key.key_size}")
    numbers = public_key.public_numbers()
    return (
        struct.pack(">HHI", TPM_ALG_RSA, TPM_ALG_SHA256, AK_ATTRIBUTES)
        + tpm2b(b"")
        + struct.pack(">HHHHI", TPM_ALG_NULL, TPM_ALG_RSASSA, TPM_ALG_SHA256, _AK_BITS,
                      0 if numbers.e == _DEFAULT_EXPONENT else numbers.e)  # fmt: skip
        + tpm2b(numbers.n.to_bytes(_AK_BITS // 8, "big"))
    )


def _read_public_area(area: bytes) -> rsa.RSAPublicKey:
    cursor = Cursor(area, "AikPub's TPMT_PUBLIC", Check.AK_PUBLIC)
    expected = (
        ("type", TPM_ALG_RSA),
        ("nameAlg", TPM_ALG_SHA256),
    )
    for field, value in expected:
        seen = cursor.u16(field)
        if seen != value:
            raise cursor.refuse(f"{field} is 0x{seen:04x}, not 0x{value:04x}")
    attributes = cursor.u32("objectAttributes")
    if attributes != AK_ATTRIBUTES:
        raise cursor.refuse(f"objectAttributes are 0x{attributes:08x}, not Azure's AK's 0x{AK_ATTRIBUTES:08x}")
    if cursor.tpm2b("authPolicy", SHA256_SIZE):
        raise cursor.refuse("the AK has an authPolicy; Azure's has none")
    for field, value in (("symmetric", TPM_ALG_NULL), ("scheme", TPM_ALG_RSASSA), ("scheme hashAlg", TPM_ALG_SHA256),
                         ("keyBits", _AK_BITS)):  # fmt: skip
        seen = cursor.u16(field)
        if seen != value:
            raise cursor.refuse(f"{field} is 0x{seen:04x}, not 0x{value:04x}")
    exponent = cursor.u32("exponent") or _DEFAULT_EXPONENT
    modulus = cursor.tpm2b("unique", _AK_BITS // 8)
    cursor.finish()
    if len(modulus) != _AK_BITS // 8 or not modulus[0] & 0x80:
        raise cursor.refuse(f"unique is not a {_AK_BITS}-bit RSA modulus")
    try:
        return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    except ValueError as exc:
        raise cursor.refuse(f"the AK is not an RSA public key: {exc}") from None
