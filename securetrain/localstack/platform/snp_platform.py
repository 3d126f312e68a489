"""A simulated AMD SEV-SNP platform: the local stack's stand-in for a confidential VM's secure processor.

What it is: an ARK -> ASK -> VCEK chain of its own, made with AMD's algorithms (RSA-4096 ARK and ASK,
ECDSA P-384 VCEK, every certificate signed with RSASSA-PSS/SHA-384, salt 48), kept in a state directory,
and a writer of byte-exact ATTESTATION_REPORTs (version 3 layout, Milan CPUID) signed by the VCEK, with
the MEASUREMENT, HOST_DATA, REPORT_DATA, guest policy, VMPL and TCB the caller chooses. Like AMD's key
server it issues one VCEK per TCB, carrying the TCB and the chip's hwID in AMD's extensions, so the real
verifier (:mod:`securetrain.core.snp.verifier`) checks its reports exactly as it checks AMD's.

What it is not: hardware. Nothing here measures or isolates anything — the caller *states* the
measurement — and its private keys are files on disk. Every certificate subject says SIMULATED; its
root is not one of AMD's ARKs, so a verifier reports its evidence as simulated, a verifier must be configured
to trust its root (the attestation service's ``--trust-root``) to accept it at all, and tokens it earns say so.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from securetrain.core.errors import ConfigurationError
from securetrain.core.fsutil import atomic_output
from securetrain.core.snp.certs import (
    AMD_HW_ID_EXTENSION,
    AMD_PRODUCT_NAME_EXTENSION,
    AMD_TCB_EXTENSIONS,
    CertificateChain,
    SnpCertificate,
)
from securetrain.core.snp.report import (
    ECDSA_P384_SHA384,
    AttestationReport,
    Cpuid,
    EcdsaSignature,
    FirmwareVersion,
    GuestPolicy,
    PlatformInfo,
    SigningKey,
    TcbVersion,
)
from securetrain.core.snp.roots import TrustedRoot

logger = logging.getLogger(__name__)
_Key = TypeVar("_Key", rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)

SIMULATION_ORGANIZATION = "securetrain SIMULATED SEV-SNP platform - not AMD hardware"
ROOT_NAME = "securetrain simulated ARK"
DEFAULT_TCB = TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
# The processor and firmware the simulation claims to be: a Milan B0 running SNP firmware 1.55.
MILAN_B0 = Cpuid(family=0x19, model=0x01, stepping=0x01)
FIRMWARE = FirmwareVersion(major=1, minor=55, build=0)
# SMT enabled, as on the Milan test vector's host.
PLATFORM_INFO = PlatformInfo(0x1)

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_RSA_BITS = 4096
_ROOT_VALIDITY = datetime.timedelta(days=25 * 365)
_VCEK_VALIDITY = datetime.timedelta(days=7 * 365)
_CLOCK_SKEW = datetime.timedelta(days=1)
_ARK_KEY, _ARK_CERT, _ASK_KEY, _ASK_CERT, _CHIP_ID = "ark.key", "ark.pem", "ask.key", "ask.pem", "chip_id.hex"
_PLATFORM_FILES = (_ARK_KEY, _ARK_CERT, _ASK_KEY, _ASK_CERT, _CHIP_ID)


@dataclass(frozen=True)
class SimulatedEvidence:
    """A signed report and the chain that vouches for it (VCEK for the report's TCB, ASK, ARK)."""

    report: bytes
    chain: CertificateChain

    @property
    def vcek_chain_pem(self) -> bytes:
        """VCEK, ASK and ARK as one PEM bundle: what Azure's attestation request calls ``VcekCertChain``."""
        return self.chain.to_pem_bundle()


class SimulatedSnpPlatform:
    """One simulated chip and its certificate authority; get one with :meth:`load_or_create`."""

    def __init__(
        self,
        state_dir: Path,
        ark: tuple[rsa.RSAPrivateKey, x509.Certificate],
        ask: tuple[rsa.RSAPrivateKey, x509.Certificate],
        chip_id: bytes,
    ) -> None:
        self._state_dir = state_dir
        self._ark_key, self._ark_cert = ark
        self._ask_key, self._ask_cert = ask
        self._chip_id = chip_id

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SimulatedSnpPlatform:
        """The platform kept in ``state_dir``, created there (keys 0600, directory 0700) on first use."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(state_dir):
            present = [name for name in _PLATFORM_FILES if (state_dir / name).exists()]
            if not present:
                _create(state_dir)
            elif len(present) != len(_PLATFORM_FILES):
                missing = sorted(set(_PLATFORM_FILES) - set(present))
                raise ConfigurationError(
                    f"simulated SNP platform in {state_dir} is incomplete (missing {', '.join(missing)}); "
                    "remove the directory to create a new platform"
                )
            return cls(
                state_dir,
                _load_pair(state_dir, _ARK_KEY, _ARK_CERT, rsa.RSAPrivateKey),
                _load_pair(state_dir, _ASK_KEY, _ASK_CERT, rsa.RSAPrivateKey),
                bytes.fromhex((state_dir / _CHIP_ID).read_text().strip()),
            )

    @property
    def root(self) -> TrustedRoot:
        """The simulated ARK as a trusted root, for configurations that choose to trust it."""
        # Hashed by the verifier's own certificate reader, so the two can never disagree on the digest.
        ark = SnpCertificate.from_der(self._ark_cert.public_bytes(serialization.Encoding.DER), "ARK")
        return TrustedRoot(ROOT_NAME, ark.spki_sha256)

    @property
    def root_certificate_path(self) -> Path:
        """The simulated ARK's certificate (public): what a verifier configured to trust the platform reads."""
        return self._state_dir / _ARK_CERT

    @property
    def chip_id(self) -> bytes:
        """The simulated chip's 64-byte CHIP_ID (the hwID in its VCEKs)."""
        return self._chip_id

    def certificate_chain(self, tcb: TcbVersion) -> CertificateChain:
        """The chain for reports at ``tcb``; its VCEK is issued (and kept) on first use, as AMD's KDS does."""
        _, vcek = self._vcek(tcb)
        return CertificateChain.load(
            vcek.public_bytes(serialization.Encoding.DER),
            self._ask_cert.public_bytes(serialization.Encoding.DER),
            self._ark_cert.public_bytes(serialization.Encoding.DER),
        )

    def report(
        self,
        *,
        report_data: bytes,
        measurement: bytes,
        host_data: bytes,
        policy: GuestPolicy | None = None,
        vmpl: int = 0,
        tcb: TcbVersion = DEFAULT_TCB,
        guest_svn: int = 0,
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
    ) -> SimulatedEvidence:
        """A report with the given fields, signed by the VCEK for ``tcb``, and its chain.

        ``policy`` defaults to debug off, no migration agent, SMT allowed. The platform's TCB (current,
        committed, launch and reported) is ``tcb``; each report gets a fresh random REPORT_ID and no
        migration agent.
        """
        vcek_key, _ = self._vcek(tcb)
        unsigned = AttestationReport(
            version=3,
            guest_svn=guest_svn,
            policy=policy or GuestPolicy.build(),
            family_id=family_id,
            image_id=image_id,
            vmpl=vmpl,
            signature_algorithm=ECDSA_P384_SHA384,
            current_tcb=tcb,
            platform_info=PLATFORM_INFO,
            author_key_en=False,
            mask_chip_key=False,
            signing_key=SigningKey.VCEK,
            report_data=report_data,
            measurement=measurement,
            host_data=host_data,
            id_key_digest=bytes(48),
            author_key_digest=bytes(48),
            report_id=os.urandom(32),
            report_id_ma=b"\xff" * 32,
            reported_tcb=tcb,
            cpuid=MILAN_B0,
            chip_id=self._chip_id,
            committed_tcb=tcb,
            current_version=FIRMWARE,
            committed_version=FIRMWARE,
            launch_tcb=tcb,
            # Replaced below by the signature over the other fields (the signature field is not signed).
            signature=EcdsaSignature(0, 0),
        )
        r, s = decode_dss_signature(vcek_key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA384())))
        signed = unsigned.with_signature(EcdsaSignature(r, s))
        logger.info("simulated SNP report signed: measurement %s, TCB %s", measurement.hex(), tcb.to_dict())
        return SimulatedEvidence(signed.to_bytes(), self.certificate_chain(tcb))

    def _vcek(self, tcb: TcbVersion) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        stem = f"vcek-{tcb.to_bytes().hex()}"
        with _locked(self._state_dir):
            if not (self._state_dir / f"{stem}.pem").exists():
                key = ec.generate_private_key(ec.SECP384R1())
                certificate = _issue_vcek(key, tcb, self._chip_id, self._ask_key, self._ask_cert)
                _store_pair(self._state_dir, key, certificate, f"{stem}.key", f"{stem}.pem")
                logger.info("simulated VCEK issued for TCB %s", tcb.to_dict())
            return _load_pair(self._state_dir, f"{stem}.key", f"{stem}.pem", ec.EllipticCurvePrivateKey)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state directory, so two processes never create keys at once."""
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create(state_dir: Path) -> None:
    logger.info("creating a simulated SEV-SNP platform in %s (RSA-4096 ARK and ASK)", state_dir)
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    ark_name = _name("ARK-Simulated")
    ark = _sign(
        _builder(ark_name, ark_name, ark_key.public_key(), _ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True),
        ark_key,
    )
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    ask = _sign(
        _builder(_name("SEV-Simulated"), ark_name, ask_key.public_key(), _ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=False), critical=True),
        ark_key,
    )
    _store_pair(state_dir, ark_key, ark, _ARK_KEY, _ARK_CERT)
    _store_pair(state_dir, ask_key, ask, _ASK_KEY, _ASK_CERT)
    with atomic_output(state_dir / _CHIP_ID, mode=0o644) as out:
        out.write(os.urandom(64).hex().encode() + b"\n")


def _issue_vcek(
    key: ec.EllipticCurvePrivateKey,
    tcb: TcbVersion,
    chip_id: bytes,
    ask_key: rsa.RSAPrivateKey,
    ask: x509.Certificate,
) -> x509.Certificate:
    builder = _builder(_name("SEV-VCEK"), ask.subject, key.public_key(), _VCEK_VALIDITY)
    # AMD encodes the product name as an IA5String, the SPLs as INTEGERs and the hwID as the raw chip id
    # inside extnValue.
    amd_extensions = {
        AMD_PRODUCT_NAME_EXTENSION: asn1.encode_der(asn1.IA5String("Simulated")),
        AMD_HW_ID_EXTENSION: chip_id,
        **{oid: asn1.encode_der(getattr(tcb, component)) for component, oid in AMD_TCB_EXTENSIONS.items()},
    }
    for oid, value in amd_extensions.items():
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return _sign(builder, ask_key)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "SIMULATION"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATION_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} (SIMULATED)"),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    validity: datetime.timedelta,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        # AMD's VCEKs carry serial 0, but CertificateBuilder refuses serials that are not positive (RFC 5280);
        # the genuine Milan VCEK is what tests the serial-0 case.
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + validity)
    )


def _key_usage(*, key_cert_sign: bool, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_PSS)


def _store_pair(
    state_dir: Path, key: PrivateKeyTypes, certificate: x509.Certificate, key_name: str, cert_name: str
) -> None:
    with atomic_output(state_dir / key_name, mode=0o600) as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    with atomic_output(state_dir / cert_name, mode=0o644) as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))


def _load_pair(state_dir: Path, key_name: str, cert_name: str, key_type: type[_Key]) -> tuple[_Key, x509.Certificate]:
    """Load a private key and its certificate, refusing a key of another type or one that does not match."""
    try:
        key = serialization.load_pem_private_key((state_dir / key_name).read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate((state_dir / cert_name).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"simulated SNP platform file in {state_dir} is unreadable: {exc}") from None
    if not isinstance(key, key_type):
        raise ConfigurationError(f"{state_dir / key_name} is not a {key_type.__name__}")
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != (
        certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ):
        raise ConfigurationError(f"{state_dir / key_name} does not match {state_dir / cert_name}")
    return key, certificate
