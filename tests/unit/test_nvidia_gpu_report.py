"""The GPU verifier on NVIDIA's genuine H100 report: accepted with its nonce; any change, a foreign chain, another
nonce, or a truncated or extended report refused, each naming the check."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from securetrain.core.nvidia.certs import (
    FWID_EXTENSION,
    GpuCertificateChain,
    GpuCertificateChainError,
    GpuCertificateError,
    GpuCertificateNotValidNow,
    UntrustedGpuRoot,
    spki_sha256,
)
from securetrain.core.nvidia.errors import GpuEvidenceError, SpdmFormatError
from securetrain.core.nvidia.opaque import OpaqueData
from securetrain.core.nvidia.reference import MeasurementMismatch, ReferenceMeasurements
from securetrain.core.nvidia.roots import NVIDIA_DEVICE_ROOTS, DeviceRoot
from securetrain.core.nvidia.spdm import REQUEST_SIZE, SIGNATURE_SIZE, GpuAttestationReport
from securetrain.core.nvidia.verifier import FwidMismatch, GpuNonceMismatch, GpuReportSignatureInvalid, verify_gpu_report

H100 = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "nvidia-h100"
REPORT = bytes.fromhex(H100.joinpath("hopperAttestationReport.txt").read_text().strip())
CHAIN_PEM = H100.joinpath("hopper_cert_chain_case1.txt").read_bytes()
CHAIN = GpuCertificateChain.from_pem(CHAIN_PEM)
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)

# Offsets in the genuine report (request 37 bytes, then the response; the record holds 64 blocks of 55 bytes).
_RESPONSE = REQUEST_SIZE
_RECORD = _RESPONSE + 8
_RESPONDER_NONCE = _RECORD + 64 * 55
_OPAQUE = _RESPONDER_NONCE + 32 + 2
_FWID = REPORT.index(bytes.fromhex("f5c384aebb579217a2c66b17ed0f28e6"))
_SIGNATURE = len(REPORT) - SIGNATURE_SIZE


def verify(report: bytes = REPORT, chain: GpuCertificateChain = CHAIN, **kwargs: object):
    kwargs.setdefault("expected_nonce", NONCE)
    kwargs.setdefault("now", NOW)
    return verify_gpu_report(report, chain, kwargs.pop("roots", NVIDIA_DEVICE_ROOTS), **kwargs)  # type: ignore[arg-type]


def flipped(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def test_genuine_report_is_accepted_with_its_nonce() -> None:
    verified = verify()
    assert verified.root.name == "NVIDIA Device Identity CA"
    assert not verified.simulated
    report = verified.report
    assert report.nonce == NONCE
    assert len(report.response.blocks) == 64
    assert report.response.opaque.driver_version == "550.90.07"
    assert report.response.opaque.vbios_version == "96.00.9F.00.01"
    assert report.to_bytes() == REPORT
    assert verified.to_dict()["simulated"] is False


def test_pinned_root_is_the_genuine_chain_root() -> None:
    assert spki_sha256(CHAIN.certificates[-1]) == NVIDIA_DEVICE_ROOTS[0].spki_sha256
    assert CHAIN.certificates[-1].subject.rfc4514_string() == "O=NVIDIA,CN=NVIDIA Device Identity CA"


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        pytest.param(0, SpdmFormatError, id="request-version"),
        pytest.param(1, SpdmFormatError, id="request-code"),
        pytest.param(3, SpdmFormatError, id="request-param2"),
        pytest.param(4, GpuReportSignatureInvalid, id="request-nonce-first"),
        pytest.param(REQUEST_SIZE - 2, GpuReportSignatureInvalid, id="request-nonce-last"),
        pytest.param(_RESPONSE + 1, SpdmFormatError, id="response-code"),
        pytest.param(_RESPONSE + 4, SpdmFormatError, id="response-number-of-blocks"),
        pytest.param(_RESPONSE + 5, SpdmFormatError, id="response-record-length"),
        pytest.param(_RECORD, SpdmFormatError, id="block-1-index"),
        pytest.param(_RECORD + 7, GpuReportSignatureInvalid, id="block-1-value"),
        pytest.param(_RECORD + 55 + 20, GpuReportSignatureInvalid, id="block-2-value"),
        pytest.param(_RECORD + 63 * 55 + 54, GpuReportSignatureInvalid, id="block-64-value-last"),
        pytest.param(_RESPONDER_NONCE, GpuReportSignatureInvalid, id="responder-nonce"),
        pytest.param(_RESPONDER_NONCE + 32, SpdmFormatError, id="opaque-length"),
        pytest.param(_OPAQUE + 4, GpuReportSignatureInvalid, id="opaque-vbios-version"),
        pytest.param(_FWID, FwidMismatch, id="opaque-fwid"),
        pytest.param(_FWID - 1, SpdmFormatError, id="opaque-fwid-length"),
        pytest.param(len(REPORT) - SIGNATURE_SIZE - 1, GpuReportSignatureInvalid, id="opaque-last"),
        pytest.param(_SIGNATURE, GpuReportSignatureInvalid, id="signature-r"),
        pytest.param(len(REPORT) - 1, GpuReportSignatureInvalid, id="signature-s"),
    ],
)
def test_a_changed_byte_is_refused_naming_the_check(offset: int, error: type[GpuEvidenceError]) -> None:
    with pytest.raises(error):
        verify(flipped(REPORT, offset))


def test_changes_throughout_the_report_are_refused() -> None:
    """A sample of every region: each changed byte refused, by some check, never accepted."""
    for offset in range(0, len(REPORT), 11):
        with pytest.raises(GpuEvidenceError):
            verify(flipped(REPORT, offset, 0x80))


@pytest.mark.parametrize(
    "report",
    [
        pytest.param(REPORT[:-1], id="truncated-signature"),
        pytest.param(REPORT[:_OPAQUE], id="truncated-in-opaque"),
        pytest.param(REPORT[:_RECORD + 100], id="truncated-in-record"),
        pytest.param(REPORT[:REQUEST_SIZE], id="request-only"),
        pytest.param(REPORT + b"\x00", id="extended"),
        pytest.param(b"", id="empty"),
    ],
)
def test_truncated_or_extended_report_is_refused_as_malformed(report: bytes) -> None:
    with pytest.raises(SpdmFormatError):
        verify(report)


def test_mismatched_nonce_is_refused_naming_the_nonce() -> None:
    with pytest.raises(GpuNonceMismatch, match="not requested for this TEE"):
        verify(expected_nonce=bytes(32))


def _look_alike_chain(
    template: GpuCertificateChain, path_lengths: dict[int, int] | None = None
) -> tuple[GpuCertificateChain, ec.EllipticCurvePrivateKey]:
    """A chain of the same shape with the genuine subjects and extensions, but keys of our own.

    ``path_lengths`` sets the basicConstraints pathLenConstraint of the CA at that position (root first)."""
    genuine = list(reversed(template.certificates))  # root first
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in genuine]
    made: list[x509.Certificate] = []
    for position, original in enumerate(genuine):
        issuer = max(position - 1, 0)
        builder = (
            x509.CertificateBuilder()
            .subject_name(original.subject)
            .issuer_name(genuine[issuer].subject)
            .public_key(keys[position].public_key())
            .serial_number(original.serial_number)
            .not_valid_before(original.not_valid_before_utc)
            .not_valid_after(original.not_valid_after_utc)
        )
        for extension in original.extensions:
            if extension.oid in (x509.SubjectKeyIdentifier.oid, x509.AuthorityKeyIdentifier.oid):
                continue
            value = extension.value
            if isinstance(value, x509.BasicConstraints) and position in (path_lengths or {}):
                value = x509.BasicConstraints(ca=True, path_length=(path_lengths or {})[position])
            builder = builder.add_extension(value, extension.critical)
        made.append(builder.sign(keys[issuer], hashes.SHA384()))
    return GpuCertificateChain(tuple(reversed(made))), keys[-1]


def _resigned(report: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    signed = report[:_SIGNATURE]
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
    return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def test_look_alike_chain_is_refused_naming_the_pinned_root() -> None:
    chain, leaf_key = _look_alike_chain(CHAIN)
    assert chain.fwid() == CHAIN.fwid()
    with pytest.raises(UntrustedGpuRoot, match="not a pinned root"):
        verify(_resigned(REPORT, leaf_key), chain)


def test_look_alike_chain_verifies_only_under_its_own_root() -> None:
    """The same chain passes when its root is the pinned one: the pin, not the names, is what refused it."""
    chain, leaf_key = _look_alike_chain(CHAIN)
    own_root = DeviceRoot("look-alike", spki_sha256(chain.certificates[-1]))
    verified = verify(_resigned(REPORT, leaf_key), chain, roots=[own_root])
    assert verified.simulated


def test_foreign_leaf_under_the_genuine_root_is_refused_naming_the_chain() -> None:
    chain, _ = _look_alike_chain(CHAIN)
    spliced = GpuCertificateChain((chain.leaf, *CHAIN.certificates[1:]))
    with pytest.raises(GpuCertificateChainError, match="leaf certificate's signature does not verify"):
        verify(chain=spliced)


def test_genuine_report_with_a_foreign_leaf_key_is_refused_naming_the_signature() -> None:
    chain, _ = _look_alike_chain(CHAIN)
    own_root = DeviceRoot("look-alike", spki_sha256(chain.certificates[-1]))
    with pytest.raises(GpuReportSignatureInvalid):
        verify(chain=chain, roots=[own_root])


def test_chain_out_of_order_or_short_is_refused() -> None:
    with pytest.raises(GpuCertificateChainError):
        verify(chain=GpuCertificateChain(tuple(reversed(CHAIN.certificates))))
    first_four = b"".join(CHAIN_PEM.partition(b"-----END CERTIFICATE-----")[0:2]) * 4
    with pytest.raises(GpuCertificateError, match="expected 5"):
        GpuCertificateChain.from_pem(first_four)
    with pytest.raises(GpuCertificateError, match="holds 4 certificates"):
        GpuCertificateChain(CHAIN.certificates[1:])


def test_certificates_must_be_valid_now() -> None:
    with pytest.raises(GpuCertificateNotValidNow):
        verify(now=datetime.datetime(2019, 1, 1, tzinfo=datetime.UTC))


def test_leaf_without_fwid_extension_is_refused() -> None:
    assert CHAIN.leaf.extensions.get_extension_for_oid(FWID_EXTENSION)
    chain, _ = _look_alike_chain(GpuCertificateChain((CHAIN.certificates[1], *CHAIN.certificates[1:])))
    with pytest.raises(GpuCertificateError, match="no FWID extension"):
        chain.fwid()


def _reference(measurements: dict[int, bytes]) -> ReferenceMeasurements:
    return ReferenceMeasurements("test RIM", {index: frozenset({value}) for index, value in measurements.items()})


def test_measurements_matching_the_reference_are_accepted() -> None:
    measurements = GpuAttestationReport.from_bytes(REPORT).response.measurements()
    golden = {index: measurements[index] for index in (2, 3, 4, 10, 35)}
    verified = verify(reference=_reference(golden))
    assert verified.to_dict()["reference"] == "test RIM"


def test_a_measurement_off_the_reference_is_refused_naming_its_index() -> None:
    measurements = GpuAttestationReport.from_bytes(REPORT).response.measurements()
    golden = {2: measurements[2], 3: bytes(48)}
    with pytest.raises(MeasurementMismatch, match="GPU measurement 3 "):
        verify(reference=_reference(golden))


def test_reference_alternatives_and_missing_index() -> None:
    measurements = GpuAttestationReport.from_bytes(REPORT).response.measurements()
    alternatives = ReferenceMeasurements.from_dict(
        {"source": "driver RIM", "measurements": {"2": [bytes(48).hex(), measurements[2].hex()]}}
    )
    verify(reference=alternatives)
    with pytest.raises(MeasurementMismatch, match="no measurement at index 100"):
        _reference({100: bytes(48)}).check(measurements)


def test_a_path_length_constraint_is_enforced() -> None:
    """The identity intermediate (position 1, root first) may not have two CAs below it if it allows only one."""
    chain, leaf_key = _look_alike_chain(CHAIN, {1: 1})
    own_root = DeviceRoot("look-alike", spki_sha256(chain.certificates[-1]))
    with pytest.raises(GpuCertificateChainError, match="allows 1 CAs below it, the chain has 2"):
        verify(_resigned(REPORT, leaf_key), chain, roots=[own_root])
    chain, leaf_key = _look_alike_chain(CHAIN, {1: 2})
    verify(_resigned(REPORT, leaf_key), chain, roots=[DeviceRoot("look-alike", spki_sha256(chain.certificates[-1]))])


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(REPORT)), st.integers(0, 8), st.binary(max_size=8))
def test_any_splice_is_refused_with_a_named_gpu_error(offset: int, removed: int, inserted: bytes) -> None:
    """Bytes removed or inserted anywhere: refused by a GpuEvidenceError (never another exception, never accepted)."""
    changed = REPORT[:offset] + inserted + REPORT[offset + removed :]
    if changed == REPORT:
        return
    with pytest.raises(GpuEvidenceError):
        verify(changed)


@pytest.mark.parametrize(
    ("opaque", "message"),
    [
        pytest.param(b"\x03\x00\x02\x00ab", "DRIVER_VERSION is not NUL-terminated", id="driver-version-unterminated"),
        pytest.param(b"\x06\x00\x02\x00ab", "VBIOS_VERSION is 2 bytes", id="vbios-version-size"),
        pytest.param(b"\x1a\x00\x00\x00", "type 26 is not one NVIDIA defines", id="unknown-type"),
        pytest.param(b"\x14\x00\x00\x00\x14\x00\x00\x00", "FWID appears twice", id="repeated"),
        pytest.param(b"\x14\x00\x30\x00" + bytes(47), "FWID Data needs 48 bytes", id="short-entry"),
        pytest.param(b"\x14\x00\x30", "FWID DataSize needs 2 bytes", id="cut-header"),
    ],
)
def test_malformed_opaque_data_is_refused_naming_the_field(opaque: bytes, message: str) -> None:
    with pytest.raises(SpdmFormatError, match=message):
        OpaqueData.from_bytes(opaque)
