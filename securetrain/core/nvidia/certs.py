"""The device certificate chain behind a GPU's attestation key, and the FWID its leaf certifies.

NVIDIA's Hopper profile, as the genuine H100 chain shows and NVIDIA's verifier expects (five certificates,
leaf first): the attestation key's certificate (``GH100 A01 GSP FMC LF``, issued by the GPU's boot ROM), the
per-GPU ``GSP BROM`` certificate, NVIDIA's provisioner intermediate, the ``GH100 Identity`` intermediate and
the self-signed ``NVIDIA Device Identity CA``. Every key is ECDSA P-384 and every certificate is signed with
ecdsa-with-SHA384; anything else is refused.

The leaf carries, under the TCG DICE TcbInfo OID 2.23.133.5.4.1, NVIDIA's Hopper encoding
``SEQUENCE { version INTEGER, key SubjectPublicKeyInfo, fwid SEQUENCE { hashAlg OID, digest OCTET STRING } }``:
the FWID is the SHA-384 of the firmware that holds the attestation key. The report's opaque data repeats it,
and the verifier requires the two to be equal (NVIDIA's ``verify_gpu_certificate_chain``), which ties the
signed report to the firmware the certificate was issued for.

Revocation is not checked here: it needs NVIDIA's OCSP responder (see docs/attestation.md).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from securetrain.core.nvidia.errors import GpuEvidenceError
from securetrain.core.nvidia.roots import DeviceRoot

CHAIN_LENGTH = 5
FWID_EXTENSION = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.2")
_SHA384_SIZE = 48
_ROLES = ("leaf", "device (BROM)", "provisioner intermediate", "identity intermediate", "root")
# RFC 5280: a critical extension the verifier does not process makes the certificate unusable.
_PROCESSED_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


class GpuCertificateError(GpuEvidenceError):
    """A certificate of the GPU's chain is malformed or not of NVIDIA's profile."""


class GpuCertificateChainError(GpuEvidenceError):
    """The certificates do not form a valid chain from the GPU's attestation key to a trusted root."""


class UntrustedGpuRoot(GpuCertificateChainError):
    """The chain ends in a root that is not among the pinned trusted roots."""


class GpuCertificateNotValidNow(GpuCertificateChainError):
    """A certificate of the chain is expired or not yet valid."""


@asn1.sequence
class Fwid:
    """TCG DICE FWID: a hash algorithm and the digest of a firmware layer."""

    hash_algorithm: x509.ObjectIdentifier
    digest: bytes


@asn1.sequence
class HopperTcbInfo:
    """The value of a Hopper leaf certificate's 2.23.133.5.4.1 extension (NVIDIA's encoding, see module doc)."""

    version: int
    key: asn1.TLV
    fwid: Fwid


@dataclass(frozen=True)
class GpuCertificateChain:
    """A GPU's device certificate chain, leaf (the attestation key) first, root last."""

    certificates: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if len(self.certificates) != CHAIN_LENGTH:
            raise GpuCertificateError(
                f"GPU certificate chain holds {len(self.certificates)} certificates, expected {CHAIN_LENGTH}"
            )

    @classmethod
    def from_pem(cls, data: bytes) -> GpuCertificateChain:
        """Read NVIDIA's PEM bundle, leaf first; exactly :data:`CHAIN_LENGTH` certificates."""
        blocks = _PEM_CERTIFICATE.findall(data)
        if len(blocks) != CHAIN_LENGTH:
            raise GpuCertificateError(f"GPU certificate chain holds {len(blocks)} certificates, expected {CHAIN_LENGTH}")
        certificates = []
        for block, role in zip(blocks, _ROLES, strict=True):
            try:
                certificate = x509.load_pem_x509_certificate(block)
                # Extensions are decoded lazily; decode them now, so a malformed one is refused here.
                certificate.extensions  # noqa: B018
                certificates.append(certificate)
            except ValueError as exc:
                raise GpuCertificateError(f"GPU {role} certificate is not valid X.509: {exc}") from None
        return cls(tuple(certificates))

    def to_pem(self) -> bytes:
        """The chain as one PEM bundle, leaf first: the form :meth:`from_pem` reads."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.certificates)

    @property
    def leaf(self) -> x509.Certificate:
        """The attestation key's certificate."""
        return self.certificates[0]

    def leaf_key(self) -> ec.EllipticCurvePublicKey:
        """The attestation key, refused unless ECDSA P-384."""
        return _p384_key(self.leaf, _ROLES[0])

    def fwid(self) -> bytes:
        """The SHA-384 FWID the leaf certifies, from its TCG DICE TcbInfo extension."""
        try:
            extension = self.leaf.extensions.get_extension_for_oid(FWID_EXTENSION).value
        except x509.ExtensionNotFound:
            raise GpuCertificateError(f"GPU leaf certificate has no FWID extension {FWID_EXTENSION.dotted_string}") from None
        if not isinstance(extension, x509.UnrecognizedExtension):
            raise GpuCertificateError("GPU leaf certificate's FWID extension cannot be read")
        try:
            tcb_info = asn1.decode_der(HopperTcbInfo, extension.value)
        except ValueError as exc:
            raise GpuCertificateError(f"GPU leaf certificate's FWID extension is malformed: {exc}") from None
        if tcb_info.fwid.hash_algorithm != SHA384_OID or len(tcb_info.fwid.digest) != _SHA384_SIZE:
            raise GpuCertificateError("GPU leaf certificate's FWID is not a SHA-384 digest")
        return tcb_info.fwid.digest

    def verify(self, trusted_roots: Collection[DeviceRoot], *, now: datetime) -> DeviceRoot:
        """Check the chain ends in a pinned root and every link holds at ``now``; return that root.

        Order: the last certificate's key is a pinned root and it is self-issued and self-signed; every
        certificate is issued and signed (ecdsa-with-SHA384, P-384) by the next; every issuer is a CA allowed
        to sign certificates; the leaf's key may sign; no critical extension goes unprocessed; all are valid
        at ``now``.
        """
        root_certificate = self.certificates[-1]
        root = _trusted_root(root_certificate, trusted_roots)
        for position, certificate in enumerate(self.certificates):
            role = _ROLES[position]
            _check_critical_extensions(certificate, role)
            issuer_position = min(position + 1, CHAIN_LENGTH - 1)
            _check_issued_by(certificate, role, self.certificates[issuer_position], _ROLES[issuer_position])
            if position > 0:
                _check_signing_ca(certificate, role, intermediates_below=position - 1)
        self.leaf_key()
        if not _key_usage(self.leaf).digital_signature:
            raise GpuCertificateChainError("GPU leaf certificate's keyUsage does not allow digital signatures")
        for certificate, role in zip(self.certificates, _ROLES, strict=True):
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise GpuCertificateNotValidNow(
                    f"GPU {role} certificate is valid from {certificate.not_valid_before_utc:%Y-%m-%d} to "
                    f"{certificate.not_valid_after_utc:%Y-%m-%d}, not at {now:%Y-%m-%d %H:%M:%S} UTC"
                )
        return root


def spki_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 of a certificate's SubjectPublicKeyInfo: how a root is named."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(_public_key(certificate).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return digest.finalize()


def _public_key(certificate: x509.Certificate) -> PublicKeyTypes:
    try:
        return certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise GpuCertificateError(f"GPU certificate '{_name(certificate)}': its public key cannot be loaded: {exc}") from None


def _trusted_root(certificate: x509.Certificate, trusted_roots: Collection[DeviceRoot]) -> DeviceRoot:
    digest = spki_sha256(certificate)
    for root in trusted_roots:
        if root.spki_sha256 == digest:
            return root
    names = ", ".join(root.name for root in trusted_roots) or "none"
    raise UntrustedGpuRoot(
        f"GPU chain ends in '{_name(certificate)}' (key SHA-256 {digest.hex()}), not a pinned root; trusted: {names}"
    )


def _check_issued_by(certificate: x509.Certificate, role: str, issuer: x509.Certificate, issuer_role: str) -> None:
    if certificate.issuer != issuer.subject:
        raise GpuCertificateChainError(
            f"GPU {role} certificate is issued by '{certificate.issuer.rfc4514_string()}', "
            f"but the {issuer_role} is '{_name(issuer)}'"
        )
    if certificate.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        raise GpuCertificateChainError(f"GPU {role} certificate is not signed with ecdsa-with-SHA384")
    try:
        _p384_key(issuer, issuer_role).verify(
            certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature:
        raise GpuCertificateChainError(
            f"GPU {role} certificate's signature does not verify with the {issuer_role}'s key"
        ) from None


def _p384_key(certificate: x509.Certificate, role: str) -> ec.EllipticCurvePublicKey:
    key = _public_key(certificate)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise GpuCertificateChainError(f"GPU {role} key must be ECDSA P-384, as in NVIDIA's profile")
    return key


def _check_signing_ca(certificate: x509.Certificate, role: str, *, intermediates_below: int) -> None:
    """A CA allowed to sign certificates, whose path length constraint (RFC 5280) admits the CAs below it."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = x509.BasicConstraints(ca=False, path_length=None)
    if not constraints.ca or not _key_usage(certificate).key_cert_sign:
        raise GpuCertificateChainError(f"GPU {role} certificate '{_name(certificate)}' is not a CA certificate")
    if constraints.path_length is not None and intermediates_below > constraints.path_length:
        raise GpuCertificateChainError(
            f"GPU {role} certificate allows {constraints.path_length} CAs below it, the chain has {intermediates_below}"
        )


def _key_usage(certificate: x509.Certificate) -> x509.KeyUsage:
    try:
        return certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise GpuCertificateChainError(f"GPU certificate '{_name(certificate)}' has no keyUsage") from None


def _check_critical_extensions(certificate: x509.Certificate, role: str) -> None:
    for extension in certificate.extensions:
        if extension.critical and extension.oid not in _PROCESSED_CRITICAL:
            raise GpuCertificateError(f"GPU {role} certificate: critical extension {extension.oid.dotted_string} is not understood")


def _name(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()
