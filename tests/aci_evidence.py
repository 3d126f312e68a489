"""Genuine ACI evidence (../shared/testdata/azure-aci/) and a UVM endorsement signer of the tests' own.

The genuine files are read once. :func:`own_signer` is a three-level chain in Microsoft's shape (root →
intermediate CA → leaf with the ContainerPlat EKU) whose leaf signs endorsements as Microsoft's does; it lets
tests make endorsements that are validly signed yet wrong (another measurement, another feed, a signing
time outside the leaf's life) and prove that the check meant to catch each does.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from securetrain.core.aci.uvm_endorsement import UvmEndorsementTrust

ACI = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "azure-aci"
DOCUMENT: dict[str, Any] = json.loads(ACI.joinpath("evidence.json").read_text())
MAA_REQUEST: dict[str, Any] = json.loads(ACI.joinpath("maa-request.json").read_text())
CCE_POLICY = ACI.joinpath("cce-policy.txt").read_bytes()
ENDORSEMENT = base64.b64decode(DOCUMENT["report"]["snpCACI"]["uvmEndorsements"])
REPORT = base64.b64decode(DOCUMENT["report"]["snpCACI"]["attestation"])
MEASUREMENT = REPORT[0x90:0xC0]
# After the endorsement's leaf certificate expired (2026-05-15) and inside the VCEK's life (to 2032-01-28):
# the genuine evidence must verify then, and these tests do not expire with it.
NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
SIGNED_AT = datetime.datetime(2025, 9, 30, 17, 24, 6, tzinfo=datetime.UTC)
CONTAINERPLAT_EKU = "1.3.6.1.4.1.311.76.59.1.2"
LEAF_EKU = ["1.3.6.1.4.1.311.76.59.1.1", CONTAINERPLAT_EKU]
LEAF_LIFE = (datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC), datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))


def flipped(data: bytes, offset: int, mask: int = 1) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def endorsement_parts(endorsement: bytes = ENDORSEMENT) -> list[Any]:
    """``[protected, unprotected, payload, signature]`` of a COSE_Sign1."""
    return cbor2.loads(endorsement).value


def cose_sign1(protected: bytes, unprotected: dict[Any, Any], payload: bytes, signature: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, signature]))


@dataclass(frozen=True)
class Signer:
    """A root, an intermediate CA and a leaf signing key, in the shape of Microsoft's UVM signing chain."""

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: rsa.RSAPrivateKey
    intermediate_key: rsa.RSAPrivateKey

    def with_leaf(self, **changes: Any) -> Signer:
        """The same CAs with another leaf: ``changes`` to :func:`certificate`'s arguments for it."""
        key = rsa_key()
        arguments = {"ca": False, "not_before": LEAF_LIFE[0], "not_after": LEAF_LIFE[1], "eku": LEAF_EKU, **changes}
        leaf = certificate("test ContainerPlat", key, self.intermediate, self.intermediate_key, **arguments)
        return Signer(self.root, self.intermediate, leaf, key, self.intermediate_key)

    @property
    def chain(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.leaf, self.intermediate, self.root)]

    @property
    def issuer(self) -> str:
        fingerprint = hashlib.sha256(self.chain[-1]).digest()
        return f"did:x509:0:sha256:{base64.urlsafe_b64encode(fingerprint).rstrip(b'=').decode()}::eku:{CONTAINERPLAT_EKU}"

    @property
    def trust(self) -> UvmEndorsementTrust:
        spki = self.root.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return UvmEndorsementTrust("test UVM root", hashlib.sha256(spki).digest(), self.issuer, "ContainerPlat-AMD-UVM")

    def endorse(
        self,
        measurement: bytes = MEASUREMENT,
        *,
        svn: str = "103",
        payload: dict[str, Any] | None = None,
        signing_time: datetime.datetime = SIGNED_AT,
        chain: list[bytes] | None = None,
        **headers: Any,
    ) -> bytes:
        """An endorsement of ``measurement``; ``headers`` replace protected headers (None removes one)."""
        body = payload if payload is not None else {
            "x-ms-sevsnpvm-launchmeasurement": measurement.hex(),
            "x-ms-sevsnpvm-guestsvn": svn,
            "x-ms-sevsnpvm-guestsvn-int": int(svn),
        }
        protected: dict[Any, Any] = {
            1: -38,
            3: "application/json",
            33: self.chain if chain is None else chain,
            "iss": self.issuer,
            "feed": "ContainerPlat-AMD-UVM",
            "signingtime": cbor2.CBORTag(1, int(signing_time.timestamp())),
        }
        for name, value in headers.items():
            label = {"alg": 1, "content_type": 3, "x5chain": 33, "crit": 2}.get(name, name)
            if value is None:
                protected.pop(label, None)
            else:
                protected[label] = value
        # Signed here, not with cwt, so that headers cwt would refuse to write can be tested, and so that
        # the verifier's use of cwt is checked against an independent Sig_structure (RFC 9052 section 4.4).
        encoded = cbor2.dumps(protected)
        payload_bytes = json.dumps(body).encode()
        to_be_signed = cbor2.dumps(["Signature1", encoded, b"", payload_bytes])
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
        return cose_sign1(encoded, {}, payload_bytes, self.leaf_key.sign(to_be_signed, pss, hashes.SHA384()))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securetrain tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    eku: list[str] | None = None,
    key_usage: dict[str, bool] | None = None,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    """A certificate as Microsoft's chain has them: CA or signing leaf, SHA-384 RSA signatures."""
    usage = dict.fromkeys(
        ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"], False)  # fmt: skip
    usage.update(key_usage or ({"key_cert_sign": True, "crl_sign": True} if ca else {"digital_signature": True}))
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject) if issuer is None else issuer.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in eku]), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA384())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def own_signer() -> Signer:
    """The tests' own signing chain (made once per session): leaf valid in 2025 only."""
    root_key, intermediate_key, leaf_key = rsa_key(), rsa_key(), rsa_key()
    long_ago, far_ahead = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), datetime.datetime(2045, 1, 1, tzinfo=datetime.UTC)
    root = certificate("test UVM root", root_key, None, root_key, ca=True, not_before=long_ago, not_after=far_ahead)
    intermediate = certificate(
        "test UVM CA", intermediate_key, root, root_key, ca=True, not_before=long_ago, not_after=far_ahead
    )
    leaf = certificate(
        "test ContainerPlat", leaf_key, intermediate, intermediate_key,
        ca=False, not_before=LEAF_LIFE[0], not_after=LEAF_LIFE[1], eku=LEAF_EKU,
    )  # fmt: skip
    return Signer(root, intermediate, leaf, leaf_key, intermediate_key)
