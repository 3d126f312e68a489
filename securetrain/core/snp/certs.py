"""The VCEK -> ASK -> ARK certificate chain that vouches for an SEV-SNP report's signing key.

AMD's profile (VCEK certificate and KDS interface specification): the ARK is a self-signed RSA-4096
root per product line, the ASK an RSA-4096 intermediate signed by the ARK, and the VCEK an ECDSA P-384
key derived in the chip for one TCB and signed by the ASK. Every signature in the chain is
RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt. Anything else is refused.

Certificates are read with pyca/cryptography's declarative ASN.1 (:mod:`cryptography.hazmat.asn1`,
strict DER: minimal lengths and integers, no encoded DEFAULT values, nothing after the certificate)
through the RFC 5280 structures below, not with ``cryptography.x509``'s certificate loader: AMD's VCEKs
carry serial number 0, which RFC 5280 forbids, and cryptography 50 loads such a certificate only with a
deprecation warning announcing that a future release will refuse it. One reader serves all three
certificates so that every link is checked by the same code. Only the fields the chain check needs are
read; public keys, distinguished names and signatures are handled by pyca/cryptography.

The VCEK also carries, in AMD-specific extensions, the TCB it was derived for (blSPL, teeSPL, snpSPL,
ucodeSPL under 1.3.6.1.4.1.3704.1.3) and the chip's hwID (1.3.6.1.4.1.3704.1.4); the verifier
compares them with the report (:mod:`securetrain.core.snp.verifier`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import TcbVersion
from securetrain.core.snp.roots import TrustedRoot

_MGF1 = x509.ObjectIdentifier("1.2.840.113549.1.1.8")
_SHA384 = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.2")
_PSS_SALT_LENGTH = 48
_RSA_KEY_BITS = 4096

_BASIC_CONSTRAINTS = ExtensionOID.BASIC_CONSTRAINTS.dotted_string
_KEY_USAGE = ExtensionOID.KEY_USAGE.dotted_string
# RFC 5280: a certificate with a critical extension the reader does not process must be refused.
_PROCESSED_CRITICAL = frozenset({_BASIC_CONSTRAINTS, _KEY_USAGE})
_KEY_USAGE_DIGITAL_SIGNATURE = 0
_KEY_USAGE_KEY_CERT_SIGN = 5

# AMD's VCEK extensions (VCEK certificate and KDS interface specification, table "VCEK extensions").
AMD_TCB_EXTENSIONS = {
    "bootloader": "1.3.6.1.4.1.3704.1.3.1",  # blSPL
    "tee": "1.3.6.1.4.1.3704.1.3.2",  # teeSPL
    "snp": "1.3.6.1.4.1.3704.1.3.3",  # snpSPL
    "microcode": "1.3.6.1.4.1.3704.1.3.8",  # ucodeSPL
}
AMD_HW_ID_EXTENSION = "1.3.6.1.4.1.3704.1.4"
AMD_PRODUCT_NAME_EXTENSION = "1.3.6.1.4.1.3704.1.2"

_T = TypeVar("_T")
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


# RFC 5280 section 4.1, the fields this module reads. TLV keeps a field's exact encoding (DER has one
# encoding per value, so re-encoding a decoded TLV gives back its bytes): the signed TBS bytes, the names
# compared byte for byte, the SubjectPublicKeyInfo a trusted root is named by.
@asn1.sequence
class _Validity:
    not_before: asn1.UTCTime | asn1.GeneralizedTime
    not_after: asn1.UTCTime | asn1.GeneralizedTime


@asn1.sequence
class _Extension:
    extn_id: x509.ObjectIdentifier
    critical: Annotated[bool, asn1.Default(False)]
    extn_value: bytes


@asn1.sequence
class _TbsCertificate:
    version: Annotated[int, asn1.Explicit(0), asn1.Default(0)]
    # Any INTEGER, not just a positive one: AMD's VCEKs carry serial number 0. Not otherwise interpreted.
    serial_number: int
    signature: asn1.TLV
    issuer: asn1.TLV
    validity: _Validity
    subject: asn1.TLV
    subject_public_key_info: asn1.TLV
    issuer_unique_id: Annotated[asn1.BitString | None, asn1.Implicit(1)]
    subject_unique_id: Annotated[asn1.BitString | None, asn1.Implicit(2)]
    extensions: Annotated[list[_Extension] | None, asn1.Explicit(3)]


@asn1.sequence
class _Certificate:
    tbs_certificate: asn1.TLV
    signature_algorithm: asn1.TLV
    signature_value: asn1.BitString


@asn1.sequence
class _BasicConstraints:
    ca: Annotated[bool, asn1.Default(False)]
    path_len_constraint: int | None


# RFC 4055 RSASSA-PSS-params. A hash algorithm's parameters are absent or NULL. Salt length and trailer
# field are read as OPTIONAL rather than DEFAULT 20 / DEFAULT 1 because AMD's certificates encode the
# default trailer field 1, which strict DER forbids; both are checked by value instead.
@asn1.sequence
class _HashAlgorithm:
    algorithm: x509.ObjectIdentifier
    parameters: asn1.Null | None


@asn1.sequence
class _MaskGenAlgorithm:
    algorithm: x509.ObjectIdentifier
    parameters: _HashAlgorithm


@asn1.sequence
class _RsassaPssParameters:
    hash_algorithm: Annotated[_HashAlgorithm | None, asn1.Explicit(0)]
    mask_gen_algorithm: Annotated[_MaskGenAlgorithm | None, asn1.Explicit(1)]
    salt_length: Annotated[int | None, asn1.Explicit(2)]
    trailer_field: Annotated[int | None, asn1.Explicit(3)]


@asn1.sequence
class _PssAlgorithmIdentifier:
    algorithm: x509.ObjectIdentifier
    parameters: _RsassaPssParameters | None


class CertificateFormatError(SnpEvidenceError):
    """A certificate is not a well-formed X.509 certificate of the shape AMD's profile requires."""


class CertificateChainError(SnpEvidenceError):
    """The certificates do not form a valid VCEK -> ASK -> ARK chain."""


class UntrustedRoot(CertificateChainError):
    """The chain ends in an ARK that is not among the trusted roots."""


class CertificateNotValidNow(CertificateChainError):
    """A certificate in the chain is expired or not yet valid."""


@dataclass(frozen=True)
class Extension:
    """One X.509 extension: whether it is critical, and the DER inside its extnValue OCTET STRING."""

    critical: bool
    value: bytes


@dataclass(frozen=True)
class SnpCertificate:
    """The fields of one certificate of the chain that verification needs, read from its DER."""

    role: str
    der: bytes
    tbs: bytes
    issuer: bytes
    subject: bytes
    issuer_name: str
    subject_name: str
    not_before: datetime
    not_after: datetime
    spki: bytes
    extensions: Mapping[str, Extension]
    signature_algorithm: bytes
    signature: bytes

    @classmethod
    def load(cls, data: bytes, role: str) -> SnpCertificate:
        """Read one certificate, PEM or DER; ``role`` (``"VCEK"``, ``"ASK"``, ``"ARK"``) names it in errors."""
        if data.lstrip().startswith(b"-----BEGIN"):
            certificates = _pem_certificates(data, role)
            if len(certificates) != 1:
                raise CertificateFormatError(f"{role}: expected one PEM certificate, found {len(certificates)}")
            data = certificates[0]
        return cls.from_der(data, role)

    @classmethod
    def from_der(cls, data: bytes, role: str) -> SnpCertificate:
        """Read a DER certificate; ``role`` names it in errors."""
        try:
            certificate = asn1.decode_der(_Certificate, data)
            tbs = certificate.tbs_certificate.parse(_TbsCertificate)
            issuer, subject = asn1.encode_der(tbs.issuer), asn1.encode_der(tbs.subject)
            issuer_name = asn1.decode_der(x509.Name, issuer).rfc4514_string()
            subject_name = asn1.decode_der(x509.Name, subject).rfc4514_string()
        except (ValueError, TypeError) as exc:
            # x509.Name raises TypeError for some value types (a BIT STRING outside x500UniqueIdentifier).
            raise CertificateFormatError(f"{role} certificate is not valid DER X.509: {exc}") from None
        if tbs.version != 2:
            raise CertificateFormatError(f"{role}: only X.509 version 3 certificates are supported")
        signature_algorithm = asn1.encode_der(certificate.signature_algorithm)
        if asn1.encode_der(tbs.signature) != signature_algorithm:
            raise CertificateFormatError(f"{role}: the signature algorithm inside and outside tbsCertificate differ")
        if certificate.signature_value.padding_bits():
            raise CertificateFormatError(f"{role}: the signature is not a whole number of octets")
        return cls(
            role=role,
            der=bytes(data),
            tbs=asn1.encode_der(certificate.tbs_certificate),
            issuer=issuer,
            subject=subject,
            issuer_name=issuer_name,
            subject_name=subject_name,
            not_before=tbs.validity.not_before.as_datetime(),
            not_after=tbs.validity.not_after.as_datetime(),
            spki=asn1.encode_der(tbs.subject_public_key_info),
            extensions=_extensions(tbs.extensions, role),
            signature_algorithm=signature_algorithm,
            signature=certificate.signature_value.as_bytes(),
        )

    def to_pem(self) -> bytes:
        """The certificate as one PEM block."""
        encoded = base64.b64encode(self.der)
        lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
        return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"

    @property
    def spki_sha256(self) -> bytes:
        """SHA-256 of the SubjectPublicKeyInfo: how a trusted root is named."""
        return hashlib.sha256(self.spki).digest()

    def public_key(self) -> PublicKeyTypes:
        """The certified public key."""
        try:
            return serialization.load_der_public_key(self.spki)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertificateFormatError(f"{self.role}: the public key cannot be loaded: {exc}") from None

    def is_ca(self) -> bool:
        """Whether basicConstraints says this is a CA certificate."""
        constraints = self._extension_value(_BASIC_CONSTRAINTS, _BasicConstraints)
        return constraints is not None and constraints.ca

    def key_usage_allows(self, bit: int) -> bool:
        """Whether keyUsage, if present, sets ``bit`` (absent keyUsage allows every use)."""
        usage = self._extension_value(_KEY_USAGE, asn1.BitString)
        if usage is None:
            return True
        octets = usage.as_bytes()
        return len(octets) > bit // 8 and bool(octets[bit // 8] & (0x80 >> bit % 8))

    def check_issued_by(self, issuer: SnpCertificate) -> None:
        """Refuse unless ``issuer`` is named as this certificate's issuer and its key signed it (RSASSA-PSS)."""
        if self.issuer != issuer.subject:
            raise CertificateChainError(
                f"{self.role} is issued by '{self.issuer_name}', but the {issuer.role} is '{issuer.subject_name}'"
            )
        _check_pss_sha384(self.signature_algorithm, self.role)
        key = issuer.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size != _RSA_KEY_BITS:
            raise CertificateChainError(f"{issuer.role} key must be RSA-{_RSA_KEY_BITS}, as in AMD's profile")
        try:
            key.verify(
                self.signature,
                self.tbs,
                padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=_PSS_SALT_LENGTH),
                hashes.SHA384(),
            )
        except InvalidSignature:
            raise CertificateChainError(
                f"{self.role} certificate signature does not verify with the {issuer.role} key"
            ) from None

    def check_valid_at(self, now: datetime) -> None:
        """Refuse unless ``now`` lies within the certificate's validity period."""
        if not self.not_before <= now <= self.not_after:
            raise CertificateNotValidNow(
                f"{self.role} certificate is valid from {self.not_before:%Y-%m-%d %H:%M:%S} to "
                f"{self.not_after:%Y-%m-%d %H:%M:%S} UTC, not at {now:%Y-%m-%d %H:%M:%S} UTC"
            )

    def amd_tcb(self) -> TcbVersion:
        """The TCB a VCEK was derived for, from its blSPL, teeSPL, snpSPL and ucodeSPL extensions (INTEGERs)."""
        levels = {}
        for component, oid in AMD_TCB_EXTENSIONS.items():
            level = self._extension_value(oid, int)
            if level is None:
                raise CertificateFormatError(f"{self.role} lacks the {component} SPL extension {oid}")
            if not 0 <= level <= 0xFF:
                raise CertificateFormatError(f"{self.role}: {component} SPL {level} is not a byte")
            levels[component] = level
        return TcbVersion(**levels)

    def amd_hw_id(self) -> bytes | None:
        """The chip's hwID a VCEK was issued for (the report's CHIP_ID), if the certificate has one."""
        extension = self.extensions.get(AMD_HW_ID_EXTENSION)
        return None if extension is None else extension.value

    def _extension_value(self, oid: str, structure: type[_T]) -> _T | None:
        """Extension ``oid``'s value decoded (strict DER) as ``structure``, or None if the certificate lacks it."""
        extension = self.extensions.get(oid)
        if extension is None:
            return None
        try:
            return asn1.decode_der(structure, extension.value)
        except ValueError as exc:
            raise CertificateFormatError(f"{self.role}: extension {oid} is malformed: {exc}") from None


@dataclass(frozen=True)
class CertificateChain:
    """The three certificates behind a report: the chip's VCEK, AMD's ASK and the product ARK."""

    vcek: SnpCertificate
    ask: SnpCertificate
    ark: SnpCertificate

    @classmethod
    def load(cls, vcek: bytes, ask: bytes, ark: bytes) -> CertificateChain:
        """Read the three certificates (each PEM or DER)."""
        return cls(SnpCertificate.load(vcek, "VCEK"), SnpCertificate.load(ask, "ASK"), SnpCertificate.load(ark, "ARK"))

    @classmethod
    def from_pem_bundle(cls, bundle: bytes) -> CertificateChain:
        """Read a PEM bundle holding VCEK, ASK and ARK in that order (Azure's ``VcekCertChain``)."""
        certificates = _pem_certificates(bundle, "certificate chain")
        if len(certificates) != 3:
            raise CertificateFormatError(
                f"certificate chain must hold VCEK, ASK and ARK in that order; found {len(certificates)} certificates"
            )
        vcek, ask, ark = (
            SnpCertificate.from_der(c, r) for c, r in zip(certificates, ("VCEK", "ASK", "ARK"), strict=True)
        )
        return cls(vcek, ask, ark)

    def to_pem_bundle(self) -> bytes:
        """VCEK, ASK and ARK as one PEM bundle, the form :meth:`from_pem_bundle` reads."""
        return b"".join(c.to_pem() for c in (self.vcek, self.ask, self.ark))

    def vcek_key(self) -> ec.EllipticCurvePublicKey:
        """The VCEK's public key, refused unless it is ECDSA P-384 as in AMD's profile."""
        key = self.vcek.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            raise CertificateChainError("VCEK key must be ECDSA P-384, as in AMD's profile")
        return key

    def verify(self, trusted_roots: Collection[TrustedRoot], *, now: datetime) -> TrustedRoot:
        """Check the chain ends in a trusted root and every link holds at ``now``; return that root.

        Order: the ARK is a trusted root, self-issued and self-signed CA; the ASK is a CA signed by the
        ARK; the VCEK is an ECDSA P-384 key signed by the ASK; all three are valid at ``now``.
        """
        root = _trusted_root(self.ark, trusted_roots)
        self.ark.check_issued_by(self.ark)
        for authority in (self.ark, self.ask):
            if not authority.is_ca() or not authority.key_usage_allows(_KEY_USAGE_KEY_CERT_SIGN):
                raise CertificateChainError(f"{authority.role} '{authority.subject_name}' is not a CA certificate")
        self.ask.check_issued_by(self.ark)
        self.vcek.check_issued_by(self.ask)
        self.vcek_key()
        if not self.vcek.key_usage_allows(_KEY_USAGE_DIGITAL_SIGNATURE):
            raise CertificateChainError("VCEK keyUsage does not allow digital signatures")
        for certificate in (self.vcek, self.ask, self.ark):
            certificate.check_valid_at(now)
        return root


def _trusted_root(ark: SnpCertificate, trusted_roots: Collection[TrustedRoot]) -> TrustedRoot:
    digest = ark.spki_sha256
    for root in trusted_roots:
        if root.spki_sha256 == digest:
            return root
    names = ", ".join(root.name for root in trusted_roots) or "none"
    raise UntrustedRoot(
        f"ARK '{ark.subject_name}' (key SHA-256 {digest.hex()}) is not a trusted root; trusted: {names}"
    )


def _check_pss_sha384(algorithm: bytes, role: str) -> None:
    """Refuse any signature algorithm but RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48, trailer 1."""
    problem = f"{role} is not signed with RSASSA-PSS/SHA-384/MGF1-SHA-384/salt {_PSS_SALT_LENGTH}"
    try:
        identifier = asn1.decode_der(_PssAlgorithmIdentifier, algorithm)
    except ValueError:
        # Parameters that are not RSASSA-PSS-params, such as sha384WithRSAEncryption's NULL.
        raise CertificateChainError(problem) from None
    parameters = identifier.parameters
    if (
        identifier.algorithm != SignatureAlgorithmOID.RSASSA_PSS
        or parameters is None
        or parameters.hash_algorithm is None
        or parameters.hash_algorithm.algorithm != _SHA384
        or parameters.mask_gen_algorithm is None
        or parameters.mask_gen_algorithm.algorithm != _MGF1
        or parameters.mask_gen_algorithm.parameters.algorithm != _SHA384
        or parameters.salt_length != _PSS_SALT_LENGTH
        or parameters.trailer_field not in (None, 1)
    ):
        raise CertificateChainError(problem)


def _extensions(entries: list[_Extension] | None, role: str) -> dict[str, Extension]:
    """The extensions by dotted OID, refusing duplicates and critical extensions this module does not process."""
    extensions: dict[str, Extension] = {}
    for entry in entries or ():
        oid = entry.extn_id.dotted_string
        if oid in extensions:
            raise CertificateFormatError(f"{role}: extension {oid} appears twice")
        if entry.critical and oid not in _PROCESSED_CRITICAL:
            raise CertificateFormatError(f"{role}: critical extension {oid} is not understood")
        extensions[oid] = Extension(entry.critical, entry.extn_value)
    return extensions


def _pem_certificates(data: bytes, what: str) -> list[bytes]:
    """The DER of every CERTIFICATE block in PEM ``data``."""
    blocks = []
    for body in _PEM_CERTIFICATE.findall(data):
        try:
            blocks.append(base64.b64decode(b"".join(body.split()), validate=True))
        except binascii.Error:
            raise CertificateFormatError(f"{what}: a PEM block is not valid base64") from None
    return blocks
