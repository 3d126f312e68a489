"""The VCEK -> ASK -> ARK certificate chain that vouches for an SEV-SNP report's signing key.

AMD's profile (VCEK certificate and KDS interface specification): the ARK is a self-signed RSA-4096
root per product line, the ASK an RSA-4096 intermediate signed by the ARK, and the VCEK an ECDSA P-384
key derived in the chip for one TCB and signed by the ASK. Every signature in the chain is
RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt. Anything else is refused.

Certificates are read with :mod:`securetrain.core.snp.der` rather than ``cryptography.x509`` because AMD's
VCEKs carry serial number 0, which cryptography warns about today and will refuse in a future
release. Only the fields the chain check needs are read; the public keys themselves are loaded, and
the signatures checked, by pyca/cryptography.

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

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from securetrain.core.snp import der
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import TcbVersion
from securetrain.core.snp.roots import TrustedRoot

_RSASSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_SHA384 = "2.16.840.1.101.3.4.2.2"
_PSS_SALT_LENGTH = 48
_RSA_KEY_BITS = 4096

_BASIC_CONSTRAINTS = "2.5.29.19"
_KEY_USAGE = "2.5.29.15"
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

_NAME_ATTRIBUTES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
}
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


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
            return cls._parse(data, role)
        except der.DerDecodeError as exc:
            raise CertificateFormatError(f"{role} certificate is not valid DER X.509: {exc}") from None
        except (IndexError, ValueError):
            # Unpacking a SEQUENCE with the wrong number of fields.
            raise CertificateFormatError(f"{role} certificate is not valid X.509: a field is missing") from None

    @classmethod
    def _parse(cls, data: bytes, role: str) -> SnpCertificate:
        parts = der.decode(data).expect(der.SEQUENCE, "Certificate").children()
        if len(parts) != 3:
            raise der.DerDecodeError("Certificate must have tbsCertificate, signatureAlgorithm, signature")
        tbs, signature_algorithm, signature = parts
        fields = tbs.expect(der.SEQUENCE, "tbsCertificate").children()
        if len(fields) < 7:
            raise der.DerDecodeError("tbsCertificate is missing fields")
        version, serial, inner_algorithm, issuer, validity, subject, spki, *optional = fields
        (version_number,) = version.expect(der.context_tag(0), "version").children()
        if version_number.as_integer() != 2:
            raise der.DerDecodeError("only X.509 version 3 certificates are supported")
        # The serial number is deliberately not interpreted: AMD's VCEKs use 0, which RFC 5280 forbids.
        serial.expect(der.INTEGER, "serialNumber")
        if inner_algorithm.encoding != signature_algorithm.expect(der.SEQUENCE, "signatureAlgorithm").encoding:
            raise der.DerDecodeError("the signature algorithm inside and outside tbsCertificate differ")
        times = validity.expect(der.SEQUENCE, "validity").children()
        if len(times) != 2:
            raise der.DerDecodeError("validity must have notBefore and notAfter")
        spki.expect(der.SEQUENCE, "subjectPublicKeyInfo")
        return cls(
            role=role,
            der=bytes(data),
            tbs=tbs.encoding,
            issuer=issuer.expect(der.SEQUENCE, "issuer").encoding,
            subject=subject.expect(der.SEQUENCE, "subject").encoding,
            issuer_name=_name_text(issuer),
            subject_name=_name_text(subject),
            not_before=times[0].as_time(),
            not_after=times[1].as_time(),
            spki=spki.encoding,
            extensions=_extensions(optional),
            signature_algorithm=signature_algorithm.encoding,
            signature=signature.as_bit_string(),
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
        extension = self.extensions.get(_BASIC_CONSTRAINTS)
        if extension is None:
            return False
        try:
            fields = der.decode(extension.value).expect(der.SEQUENCE, "basicConstraints").children()
            return bool(fields) and fields[0].tag == der.BOOLEAN and fields[0].as_boolean()
        except der.DerDecodeError as exc:
            raise CertificateFormatError(f"{self.role}: basicConstraints is malformed: {exc}") from None

    def key_usage_allows(self, bit: int) -> bool:
        """Whether keyUsage, if present, sets ``bit`` (absent keyUsage allows every use)."""
        extension = self.extensions.get(_KEY_USAGE)
        if extension is None:
            return True
        try:
            value = der.decode(extension.value).expect(der.BIT_STRING, "keyUsage").content
        except der.DerDecodeError as exc:
            raise CertificateFormatError(f"{self.role}: keyUsage is malformed: {exc}") from None
        octet = 1 + bit // 8
        return len(value) > octet and bool(value[octet] & (0x80 >> bit % 8))

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
        """The TCB a VCEK was derived for, from its blSPL, teeSPL, snpSPL and ucodeSPL extensions."""
        levels = {}
        for component, oid in AMD_TCB_EXTENSIONS.items():
            extension = self.extensions.get(oid)
            if extension is None:
                raise CertificateFormatError(f"{self.role} lacks the {component} SPL extension {oid}")
            try:
                level = der.decode(extension.value).as_integer()
            except der.DerDecodeError as exc:
                raise CertificateFormatError(f"{self.role}: {component} SPL extension is malformed: {exc}") from None
            if not 0 <= level <= 0xFF:
                raise CertificateFormatError(f"{self.role}: {component} SPL {level} is not a byte")
            levels[component] = level
        return TcbVersion(**levels)

    def amd_hw_id(self) -> bytes | None:
        """The chip's hwID a VCEK was issued for (the report's CHIP_ID), if the certificate has one."""
        extension = self.extensions.get(AMD_HW_ID_EXTENSION)
        return None if extension is None else extension.value


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
        oid, *params = der.decode(algorithm).children()
        if oid.as_oid() != _RSASSA_PSS or len(params) != 1:
            raise CertificateChainError(problem)
        fields = {
            field.tag: field.children() for field in params[0].expect(der.SEQUENCE, "RSASSA-PSS-params").children()
        }
        hash_algorithm = fields.get(der.context_tag(0))
        mask_generation = fields.get(der.context_tag(1))
        salt_length = fields.get(der.context_tag(2))
        trailer = fields.get(der.context_tag(3))
        if (
            hash_algorithm is None
            or _digest_oid(hash_algorithm[0]) != _SHA384
            or mask_generation is None
            or _mgf1_digest_oid(mask_generation[0]) != _SHA384
            or salt_length is None
            or salt_length[0].as_integer() != _PSS_SALT_LENGTH
            or (trailer is not None and trailer[0].as_integer() != 1)
        ):
            raise CertificateChainError(problem)
    except (der.DerDecodeError, IndexError, ValueError):
        raise CertificateChainError(f"{problem} (malformed algorithm parameters)") from None


def _digest_oid(algorithm: der.DerValue) -> str:
    """The OID of a hash AlgorithmIdentifier whose parameters are absent or NULL."""
    oid, *params = algorithm.expect(der.SEQUENCE, "AlgorithmIdentifier").children()
    if params and (len(params) != 1 or params[0].encoding != der.encode(der.NULL, b"")):
        raise der.DerDecodeError("hash algorithm parameters must be absent or NULL")
    return oid.as_oid()


def _mgf1_digest_oid(algorithm: der.DerValue) -> str | None:
    """The hash OID of an MGF1 AlgorithmIdentifier, or None if it is another mask generation function."""
    oid, hash_algorithm = algorithm.expect(der.SEQUENCE, "MaskGenAlgorithm").children()
    return _digest_oid(hash_algorithm) if oid.as_oid() == _MGF1 else None


def _extensions(optional: list[der.DerValue]) -> dict[str, Extension]:
    """Read [3] extensions (skipping the unused issuer/subject unique IDs), refusing duplicates."""
    unique_ids = {der.context_tag(1, constructed=False), der.context_tag(2, constructed=False)}
    extensions: dict[str, Extension] = {}
    for item in optional:
        if item.tag in unique_ids:
            continue
        if item.tag != der.context_tag(3):
            raise der.DerDecodeError(f"unexpected field with tag 0x{item.tag:02x} in tbsCertificate")
        (sequence,) = item.children()
        for entry in sequence.expect(der.SEQUENCE, "extensions").children():
            oid, *middle, value = entry.expect(der.SEQUENCE, "Extension").children()
            if len(middle) > 1:
                raise der.DerDecodeError("Extension has too many fields")
            critical = middle[0].as_boolean() if middle else False
            name = oid.as_oid()
            if name in extensions:
                raise der.DerDecodeError(f"extension {name} appears twice")
            if critical and name not in _PROCESSED_CRITICAL:
                raise der.DerDecodeError(f"critical extension {name} is not understood")
            extensions[name] = Extension(critical, value.as_octet_string())
    return extensions


def _name_text(name: der.DerValue) -> str:
    """A distinguished name for messages, e.g. ``OU=Engineering, C=US, ..., CN=SEV-VCEK``."""
    parts = []
    for relative in name.expect(der.SEQUENCE, "Name").children():
        for attribute in relative.expect(der.SET, "RelativeDistinguishedName").children():
            oid, value = attribute.expect(der.SEQUENCE, "AttributeTypeAndValue").children()
            dotted = oid.as_oid()
            try:
                text = value.as_string()
            except der.DerDecodeError:
                text = "#" + value.encoding.hex()
            parts.append(f"{_NAME_ATTRIBUTES.get(dotted, dotted)}={text}")
    return ", ".join(parts)


def _pem_certificates(data: bytes, what: str) -> list[bytes]:
    """The DER of every CERTIFICATE block in PEM ``data``."""
    blocks = []
    for body in _PEM_CERTIFICATE.findall(data):
        try:
            blocks.append(base64.b64decode(b"".join(body.split()), validate=True))
        except binascii.Error:
            raise CertificateFormatError(f"{what}: a PEM block is not valid base64") from None
    return blocks
