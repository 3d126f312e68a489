"""A simulated NVIDIA H100 in confidential-computing mode: the local stack's stand-in for a GPU's attestation.

What it is: a device certificate chain of its own with the shape of NVIDIA's Hopper chain (five certificates,
ECDSA P-384 keys, ecdsa-with-SHA384: root -> identity -> provisioner -> BROM -> attestation-key leaf, the leaf
carrying the FWID in the TCG DICE extension as NVIDIA's does), kept in a state directory, and a writer of SPDM
1.1 GET_MEASUREMENTS reports signed by the leaf key for the nonce the caller asks, through the same classes the
verifier parses them with (:mod:`securetrain.core.nvidia.spdm`).

What it is not: a GPU. Its measurements are stated, not measured (SHA-384 of fixed labels), and its keys are
files on disk. Every certificate subject says SIMULATED; its root is not NVIDIA's, so the verifier reports its
evidence as simulated and accepts it only where the root is configured as trusted, like the simulated
SEV-SNP platform's (:mod:`securetrain.localstack.platform.snp_platform`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from securetrain.core.errors import ConfigurationError
from securetrain.core.fsutil import atomic_output
from securetrain.core.nvidia.certs import FWID_EXTENSION, SHA384_OID, Fwid, GpuCertificateChain, HopperTcbInfo, spki_sha256
from securetrain.core.nvidia.opaque import OpaqueData
from securetrain.core.nvidia.roots import DeviceRoot
from securetrain.core.nvidia.spdm import (
    SIGNATURE_SIZE,
    GpuAttestationReport,
    MeasurementBlock,
    MeasurementsRequest,
    MeasurementsResponse,
)

SIMULATION_ORGANIZATION = "securetrain SIMULATED NVIDIA H100 - not NVIDIA hardware"
ROOT_NAME = "securetrain simulated NVIDIA Device Identity CA"
DRIVER_VERSION = "550.90.07"
VBIOS_VERSION_FIELD = bytes.fromhex("009f009601000000")  # shown as 96.00.9F.00.01, as the genuine H100's
MEASUREMENT_COUNT = 64
# DMTF measurement value type 1: a digest of mutable firmware, as every block of the genuine H100 report.
_DIGEST_OF_MUTABLE_FIRMWARE = 0x01
_ROLES = ("NVIDIA Device Identity CA", "GH100 Identity", "GH100 Provisioner ICA 1", "GH100 A01 GSP BROM", "GH100 A01 GSP FMC LF")
_VALIDITY = datetime.timedelta(days=25 * 365)
_CLOCK_SKEW = datetime.timedelta(days=1)
_LEAF_KEY, _CHAIN = "leaf.key", "chain.pem"


@dataclass(frozen=True)
class SimulatedGpuEvidence:
    """A signed GPU report and the device chain (PEM, leaf first) that vouches for it."""

    report: bytes
    chain: GpuCertificateChain


class SimulatedH100:
    """One simulated GPU: its attestation key and device chain; get one with :meth:`load_or_create`."""

    def __init__(self, leaf_key: ec.EllipticCurvePrivateKey, chain: GpuCertificateChain) -> None:
        self._leaf_key = leaf_key
        self.chain = chain

    @classmethod
    def create(cls) -> SimulatedH100:
        """A new simulated GPU with a fresh chain, held in memory only."""
        keys = [ec.generate_private_key(ec.SECP384R1()) for _ in _ROLES]
        names = [_name(role) for role in _ROLES]
        fwid = hashlib.sha384(b"securetrain simulated GH100 FMC firmware").digest()
        certificates: list[x509.Certificate] = []
        for position, (key, name) in enumerate(zip(keys, names, strict=True)):
            issuer = max(position - 1, 0)
            leaf = position == len(_ROLES) - 1
            builder = _builder(name, names[issuer], key.public_key())
            if leaf:
                builder = builder.add_extension(_key_usage(signing=True), critical=True).add_extension(
                    x509.UnrecognizedExtension(FWID_EXTENSION, _tcb_info(keys[issuer].public_key(), fwid)),
                    critical=False,
                )
            else:
                builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                builder = builder.add_extension(_key_usage(signing=False), critical=True)
            certificates.append(builder.sign(keys[issuer], hashes.SHA384()))
        return cls(keys[-1], GpuCertificateChain(tuple(reversed(certificates))))

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SimulatedH100:
        """The GPU kept in ``state_dir``, created there (key 0600, directory 0700) on first use.

        A new GPU is written to a temporary directory that is then renamed into place, so two processes
        starting at once end up with the same GPU: the one whose rename landed.
        """
        if not state_dir.exists():
            state_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{state_dir.name}-", dir=state_dir.parent))
            cls.create()._store(staging)
            try:
                staging.rename(state_dir)
            except OSError:
                shutil.rmtree(staging)
                if not state_dir.exists():
                    raise
        return cls._load(state_dir)

    @property
    def root(self) -> DeviceRoot:
        """The simulated root as a trusted root, for configurations that choose to trust it."""
        return DeviceRoot(ROOT_NAME, spki_sha256(self.chain.certificates[-1]))

    def measurements(self) -> tuple[MeasurementBlock, ...]:
        """The stated measurements: SHA-384 of a fixed label per index, the same for every report."""
        return tuple(
            MeasurementBlock(index, _DIGEST_OF_MUTABLE_FIRMWARE, hashlib.sha384(f"simulated GH100 measurement {index}".encode()).digest())
            for index in range(1, MEASUREMENT_COUNT + 1)
        )

    def report(self, nonce: bytes) -> SimulatedGpuEvidence:
        """A GET_MEASUREMENTS exchange for ``nonce`` (32 bytes), signed by the leaf key, and the chain."""
        request = MeasurementsRequest(nonce=nonce, slot=0)
        opaque = OpaqueData(
            {
                "DRIVER_VERSION": DRIVER_VERSION.encode() + b"\x00",
                "VBIOS_VERSION": VBIOS_VERSION_FIELD,
                "FWID": self.chain.fwid(),
            }
        )
        unsigned = MeasurementsResponse(0, self.measurements(), os.urandom(32), opaque, bytes(SIGNATURE_SIZE))
        signed_part = request.to_bytes() + unsigned.unsigned_bytes()
        r, s = decode_dss_signature(self._leaf_key.sign(signed_part, ec.ECDSA(hashes.SHA384())))
        half = SIGNATURE_SIZE // 2
        report = signed_part + r.to_bytes(half, "big") + s.to_bytes(half, "big")
        # Read back through the verifier's parser: a report this simulation writes must be one it accepts.
        GpuAttestationReport.from_bytes(report)
        return SimulatedGpuEvidence(report, self.chain)

    def _store(self, state_dir: Path) -> None:
        state_dir.chmod(0o700)
        with atomic_output(state_dir / _LEAF_KEY, mode=0o600) as out:
            out.write(
                self._leaf_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        with atomic_output(state_dir / _CHAIN, mode=0o644) as out:
            out.write(self.chain.to_pem())

    @classmethod
    def _load(cls, state_dir: Path) -> SimulatedH100:
        try:
            key = serialization.load_pem_private_key((state_dir / _LEAF_KEY).read_bytes(), password=None)
            chain = GpuCertificateChain.from_pem((state_dir / _CHAIN).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"simulated GPU in {state_dir} is unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or _spki_sha256_of_key(key) != spki_sha256(chain.leaf):
            raise ConfigurationError(f"simulated GPU in {state_dir}: {_LEAF_KEY} does not match the leaf of {_CHAIN}")
        return cls(key, chain)


def _spki_sha256_of_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """SHA-256 of a private key's SubjectPublicKeyInfo, to compare with a certificate's."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def _tcb_info(previous_layer_key: ec.EllipticCurvePublicKey, fwid: bytes) -> bytes:
    # NVIDIA's Hopper encoding: version 1, a layer key and the FWID. The genuine leaf's key field is not its
    # own key; the simulation puts the issuing (BROM) key there.
    spki = previous_layer_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return asn1.encode_der(
        HopperTcbInfo(version=1, key=asn1.decode_der(asn1.TLV, spki), fwid=Fwid(hash_algorithm=SHA384_OID, digest=fwid))
    )


def _name(role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATION_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{role} (SIMULATED)"),
        ]
    )


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signing,
        crl_sign=not signing,
        encipher_only=False,
        decipher_only=False,
    )
