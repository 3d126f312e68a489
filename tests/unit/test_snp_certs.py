"""The VCEK -> ASK -> ARK chain: AMD's genuine Milan chain, and chains that break AMD's profile."""

from __future__ import annotations

import base64
import datetime
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.snp.certs import (
    CertificateChain,
    CertificateChainError,
    CertificateFormatError,
    CertificateNotValidNow,
    SnpCertificate,
    UntrustedRoot,
)
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import TcbVersion
from securetrain.core.snp.roots import AMD_ROOTS, TrustedRoot

MILAN = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "amd-snp-milan"
VCEK_DER = MILAN.joinpath("vcek.der").read_bytes()
ASK_PEM = MILAN.joinpath("ask.pem").read_bytes()
ARK_PEM = MILAN.joinpath("ark.pem").read_bytes()
WITHIN_VALIDITY = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def milan_chain() -> CertificateChain:
    return CertificateChain.load(VCEK_DER, ASK_PEM, ARK_PEM)


def test_vcek_with_serial_zero_loads_without_any_warning() -> None:
    # cryptography itself warns about (or, in a later release, refuses) AMD's serial number 0 ...
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            x509.load_der_x509_certificate(VCEK_DER)
        except ValueError:
            pass
        else:
            assert any("serial number" in str(w.message) for w in seen)
    # ... our reader neither warns nor refuses.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vcek = SnpCertificate.load(VCEK_DER, "VCEK")
        milan_chain().verify(AMD_ROOTS, now=WITHIN_VALIDITY)
    assert vcek.subject_name.startswith("CN=SEV-VCEK,O=Advanced Micro Devices")
    assert vcek.issuer_name.startswith("CN=SEV-Milan,")


def test_milan_chain_verifies_to_amd_ark_milan() -> None:
    root = milan_chain().verify(AMD_ROOTS, now=WITHIN_VALIDITY)
    assert root.name == "AMD ARK-Milan"
    assert not root.simulated


def test_builtin_milan_root_is_the_test_vectors_ark() -> None:
    ark = SnpCertificate.load(ARK_PEM, "ARK")
    assert ark.spki_sha256 == next(r.spki_sha256 for r in AMD_ROOTS if r.name == "AMD ARK-Milan")


def test_vcek_carries_the_tcb_and_hw_id() -> None:
    vcek = SnpCertificate.load(VCEK_DER, "VCEK")
    assert vcek.amd_tcb() == TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
    hw_id = vcek.amd_hw_id()
    assert hw_id is not None and hw_id.hex().startswith("d49554ec") and len(hw_id) == 64


def test_pem_and_der_are_equivalent() -> None:
    ask_der = base64.b64decode(b"".join(ASK_PEM.splitlines()[1:-1]))
    assert SnpCertificate.load(ask_der, "ASK") == SnpCertificate.load(ASK_PEM, "ASK")
    assert SnpCertificate.load(ask_der, "ASK").to_pem() == SnpCertificate.load(ASK_PEM, "ASK").to_pem()


def test_pem_bundle_round_trip() -> None:
    chain = milan_chain()
    assert CertificateChain.from_pem_bundle(chain.to_pem_bundle()) == chain
    with pytest.raises(CertificateFormatError, match="found 2 certificates"):
        CertificateChain.from_pem_bundle(ASK_PEM + ARK_PEM)
    with pytest.raises(CertificateFormatError, match="expected one PEM certificate, found 2"):
        SnpCertificate.load(ASK_PEM + ARK_PEM, "ASK")


# The genuine VCEK starts with SEQUENCE, two length octets: 30 82 hi lo.
assert VCEK_DER[:2] == b"\x30\x82"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a certificate", "not valid DER X.509"),
        (VCEK_DER[:-1], "not valid DER X.509"),  # truncated
        (VCEK_DER + b"\x00", "not valid DER X.509"),  # a byte after the certificate
        (b"\x30\x83\x00" + VCEK_DER[2:], "not valid DER X.509"),  # length not minimally encoded (BER)
        (b"\x30\x80" + VCEK_DER[4:] + b"\x00\x00", "not valid DER X.509"),  # indefinite length (BER)
        (b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", "not valid base64"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "found 0"),
    ],
    ids=["garbage", "truncated", "trailing-byte", "long-length", "indefinite-length", "bad-base64", "not-a-certificate"],
)
def test_malformed_certificates_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(CertificateFormatError, match=message):
        SnpCertificate.load(data, "VCEK")


def test_chain_must_end_in_a_trusted_root() -> None:
    other = TrustedRoot("some other root", bytes(32))
    with pytest.raises(UntrustedRoot, match=r"ARK-Milan.*is not a trusted root; trusted: some other root"):
        milan_chain().verify([other], now=WITHIN_VALIDITY)
    with pytest.raises(UntrustedRoot, match="trusted: none"):
        milan_chain().verify([], now=WITHIN_VALIDITY)


@pytest.mark.parametrize("year", [2022, 2031])
def test_certificates_must_be_valid_now(year: int) -> None:
    with pytest.raises(CertificateNotValidNow, match="certificate is valid from"):
        milan_chain().verify(AMD_ROOTS, now=datetime.datetime(year, 6, 1, tzinfo=datetime.UTC))


def test_tampered_vcek_is_refused() -> None:
    # The last bytes of the TBS are the hwID extension: a VCEK claiming another chip.
    vcek = SnpCertificate.load(VCEK_DER, "VCEK")
    position = VCEK_DER.index(vcek.tbs) + len(vcek.tbs) - 1
    forged = VCEK_DER[:position] + bytes([VCEK_DER[position] ^ 1]) + VCEK_DER[position + 1 :]
    chain = CertificateChain.load(forged, ASK_PEM, ARK_PEM)
    with pytest.raises(CertificateChainError, match="VCEK certificate signature does not verify with the ASK key"):
        chain.verify(AMD_ROOTS, now=WITHIN_VALIDITY)


# Chains built here with pyca/cryptography, to break one rule of AMD's profile at a time.


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    issuer: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    *,
    ca: bool,
    sign: Callable[[x509.CertificateBuilder, rsa.RSAPrivateKey], x509.Certificate] | None = None,
    extra: tuple[x509.ExtensionType, bool] | None = None,
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if extra is not None:
        extension, critical = extra
        builder = builder.add_extension(extension, critical=critical)
    signed = (sign or (lambda b, k: b.sign(k, hashes.SHA384(), rsa_padding=PSS_SHA384)))(builder, signer)
    return signed.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def authority_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return rsa.generate_private_key(65537, 4096), rsa.generate_private_key(65537, 4096)


def _chain(
    authority_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    *,
    vcek_key: ec.EllipticCurvePrivateKey | None = None,
    sign_vcek: Callable[[x509.CertificateBuilder, rsa.RSAPrivateKey], x509.Certificate] | None = None,
    vcek_extra: tuple[x509.ExtensionType, bool] | None = None,
    ask_is_ca: bool = True,
    ask_key: rsa.RSAPrivateKey | None = None,
) -> tuple[CertificateChain, list[TrustedRoot]]:
    ark_key, default_ask_key = authority_keys
    ask_key = ask_key or default_ask_key
    vcek_key = vcek_key or ec.generate_private_key(ec.SECP384R1())
    ark = _certificate("test ARK", "test ARK", ark_key.public_key(), ark_key, ca=True)
    ask = _certificate("test ASK", "test ARK", ask_key.public_key(), ark_key, ca=ask_is_ca)
    vcek = _certificate(
        "test VCEK", "test ASK", vcek_key.public_key(), ask_key, ca=False, sign=sign_vcek, extra=vcek_extra
    )
    chain = CertificateChain.load(vcek, ask, ark)
    return chain, [TrustedRoot("test ARK", chain.ark.spki_sha256)]


def test_a_well_formed_chain_verifies(authority_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    chain, roots = _chain(authority_keys)
    root = chain.verify(roots, now=datetime.datetime.now(datetime.UTC))
    assert root.simulated  # not an AMD root


@pytest.mark.parametrize(
    "sign",
    [
        lambda b, k: b.sign(k, hashes.SHA384(), rsa_padding=padding.PKCS1v15()),
        lambda b, k: b.sign(k, hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 32)),
        lambda b, k: b.sign(k, hashes.SHA256(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 48)),
    ],
    ids=["pkcs1v15", "salt-32", "sha256"],
)
def test_only_rsassa_pss_sha384_salt_48_is_accepted(authority_keys: tuple, sign: Callable) -> None:
    chain, roots = _chain(authority_keys, sign_vcek=sign)
    with pytest.raises(CertificateChainError, match="VCEK is not signed with RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48"):
        chain.verify(roots, now=datetime.datetime.now(datetime.UTC))


def test_ask_must_be_a_ca(authority_keys: tuple) -> None:
    chain, roots = _chain(authority_keys, ask_is_ca=False)
    with pytest.raises(CertificateChainError, match="ASK 'CN=test ASK' is not a CA certificate"):
        chain.verify(roots, now=datetime.datetime.now(datetime.UTC))


def test_vcek_must_be_p384(authority_keys: tuple) -> None:
    chain, roots = _chain(authority_keys, vcek_key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CertificateChainError, match="VCEK key must be ECDSA P-384"):
        chain.verify(roots, now=datetime.datetime.now(datetime.UTC))


def test_ask_must_be_rsa_4096(authority_keys: tuple) -> None:
    chain, roots = _chain(authority_keys, ask_key=rsa.generate_private_key(65537, 2048))
    with pytest.raises(CertificateChainError, match="ASK key must be RSA-4096"):
        chain.verify(roots, now=datetime.datetime.now(datetime.UTC))


def test_unknown_critical_extensions_are_refused(authority_keys: tuple) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    with pytest.raises(
        CertificateFormatError, match=r"critical extension 1\.3\.6\.1\.4\.1\.55555\.1 is not understood"
    ):
        _chain(authority_keys, vcek_extra=(unknown, True))


def test_vcek_without_tcb_extensions_is_refused(authority_keys: tuple) -> None:
    chain, _ = _chain(authority_keys)
    with pytest.raises(CertificateFormatError, match="VCEK lacks the bootloader SPL extension"):
        chain.vcek.amd_tcb()
    assert chain.vcek.amd_hw_id() is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\x02\x02\x00\x03", r"extension 1\.3\.6\.1\.4\.1\.3704\.1\.3\.1 is malformed"),  # INTEGER not minimal
        (b"\x04\x01\x03", r"extension 1\.3\.6\.1\.4\.1\.3704\.1\.3\.1 is malformed"),  # not an INTEGER
        (b"\x02\x02\x01\x00", "bootloader SPL 256 is not a byte"),
    ],
    ids=["non-minimal-integer", "octet-string", "out-of-range"],
)
def test_malformed_spl_extension_is_refused(authority_keys: tuple, value: bytes, message: str) -> None:
    bootloader_spl = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1"), value)
    chain, _ = _chain(authority_keys, vcek_extra=(bootloader_spl, False))
    with pytest.raises(CertificateFormatError, match=message):
        chain.vcek.amd_tcb()


def test_milan_leaf_under_another_root_is_refused(authority_keys: tuple) -> None:
    # A chain "rooted elsewhere": AMD's VCEK and ASK presented with another (trusted) ARK.
    other, roots = _chain(authority_keys)
    chain = CertificateChain(SnpCertificate.load(VCEK_DER, "VCEK"), SnpCertificate.load(ASK_PEM, "ASK"), other.ark)
    with pytest.raises(CertificateChainError, match=r"ASK is issued by 'CN=ARK-Milan,.*', but the ARK is 'CN=test ARK'"):
        chain.verify(roots, now=WITHIN_VALIDITY)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VCEK_DER) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutated_vcek_never_verifies(changes: list[tuple[int, int]]) -> None:
    data = bytearray(VCEK_DER)
    for offset, mask in changes:
        data[offset] ^= mask
    if bytes(data) == VCEK_DER:  # two changes cancelled out
        return
    with pytest.raises(SnpEvidenceError):
        CertificateChain.load(bytes(data), ASK_PEM, ARK_PEM).verify(AMD_ROOTS, now=WITHIN_VALIDITY)
