"""The configfs-tsm provider against a directory tree laid out like the kernel's report instance.

The kernel's attributes are files here. ``generation`` is a FIFO served by a thread that answers each
read with the next value of a script, as the kernel increments it on every write to an input: that is
how the tests say whether another writer interfered. ``outblob`` and ``auxblob`` hold a report and a
certificate table made for the request (a real AMD Milan report and its chain, or the simulated
platform's), since no kernel computes them here.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.core.snp.certs import CertificateChain
from securetrain.tee.evidence import ConfigfsTsmProvider, EvidenceError, EvidenceUnavailable
from securetrain.tee.evidence.configfs_tsm import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    ConcurrentReportRequest,
    parse_certificate_table,
)

MILAN = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "amd-snp-milan"
INSTANCE = "securetrain-agent"


def der(pem_or_der: bytes) -> bytes:
    if pem_or_der.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(pem_or_der).public_bytes(serialization.Encoding.DER)
    return pem_or_der


def certificate_table(certificates: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """The GHCB certificate table: entries, an all-zero entry, then the certificates."""
    header_size = 24 * (len(certificates) + 1)
    entries, blobs, offset = b"", b"", header_size
    for guid, certificate in certificates:
        entries += struct.pack("<16sII", guid.bytes, offset, len(certificate))
        blobs += certificate
        offset += len(certificate)
    return entries + bytes(24) + blobs


class GenerationScript:
    """Serves the FIFO ``generation``: each open-for-read gets the next value."""

    def __init__(self, path: Path, values: Sequence[int]) -> None:
        os.mkfifo(path)
        self._path, self._values = path, list(values)
        self.served = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 10
        for value in self._values:
            while True:
                try:
                    descriptor = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as exc:  # ENXIO: nobody has opened it for reading yet
                    if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                        return
                    time.sleep(0.005)
            os.write(descriptor, f"{value}\n".encode())
            os.close(descriptor)
            self.served += 1
            time.sleep(0.02)  # let the reader see EOF before the next open


def make_instance(
    root: Path, *, provider: str = "sev_guest", outblob: bytes, auxblob: bytes, generations: Sequence[int]
) -> Path:
    entry = root / INSTANCE
    entry.mkdir(parents=True)
    (entry / "provider").write_text(provider + "\n")
    (entry / "inblob").write_bytes(b"")
    (entry / "privlevel").write_bytes(b"")
    (entry / "privlevel_floor").write_text("0\n")
    (entry / "outblob").write_bytes(outblob)
    (entry / "auxblob").write_bytes(auxblob)
    GenerationScript(entry / "generation", generations)
    return entry


@pytest.fixture(scope="module")
def milan() -> tuple[bytes, bytes]:
    """The genuine report and its certificate table as a host would supply it."""
    report = bytes.fromhex("".join((MILAN / "report.hex").read_text().split()))
    table = certificate_table([
        (VCEK_GUID, (MILAN / "vcek.der").read_bytes()),
        (ASK_GUID, der((MILAN / "ask.pem").read_bytes())),
        (ARK_GUID, der((MILAN / "ark.pem").read_bytes())),
    ])  # fmt: skip
    return report, table


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedSnpPlatform]:
    yield SimulatedSnpPlatform.load_or_create(tmp_path_factory.mktemp("platform"))


def milan_report_data(report: bytes) -> bytes:
    return report[0x50:0x90]


def test_genuine_report_and_chain_come_back_as_evidence(tmp_path: Path, milan) -> None:
    report, table = milan
    entry = make_instance(tmp_path, outblob=report, auxblob=table, generations=[4, 5])
    evidence = ConfigfsTsmProvider(tmp_path).report(milan_report_data(report))
    assert evidence.report == report
    assert (entry / "inblob").read_bytes() == milan_report_data(report)
    chain = CertificateChain.from_pem_bundle(evidence.vcek_chain_pem)
    assert (
        chain.vcek.to_pem()
        == CertificateChain.load(
            (MILAN / "vcek.der").read_bytes(), (MILAN / "ask.pem").read_bytes(), (MILAN / "ark.pem").read_bytes()
        ).vcek.to_pem()
    )


def test_privlevel_is_written_and_counted(tmp_path: Path, simulated) -> None:
    report_data = os.urandom(64)
    evidence = simulated.report(report_data=report_data, measurement=bytes(48), host_data=bytes(32), vmpl=2)
    chain = evidence.chain
    table = certificate_table([(VCEK_GUID, der(chain.vcek.to_pem())), (ASK_GUID, der(chain.ask.to_pem())),
                               (ARK_GUID, der(chain.ark.to_pem()))])  # fmt: skip
    entry = make_instance(tmp_path, outblob=evidence.report, auxblob=table, generations=[0, 2])
    result = ConfigfsTsmProvider(tmp_path, privlevel=2).report(report_data)
    assert result.report == evidence.report
    assert (entry / "privlevel").read_bytes() == b"2"


def test_another_writer_in_between_is_detected(tmp_path: Path, milan) -> None:
    report, table = milan
    make_instance(tmp_path, outblob=report, auxblob=table, generations=[4, 6])
    with pytest.raises(ConcurrentReportRequest, match="from 4 to 6"):
        ConfigfsTsmProvider(tmp_path).report(milan_report_data(report))


def test_a_report_for_other_report_data_is_refused(tmp_path: Path, milan) -> None:
    report, table = milan
    make_instance(tmp_path, outblob=report, auxblob=table, generations=[1, 2])
    with pytest.raises(EvidenceError, match="not the .* written to inblob"):
        ConfigfsTsmProvider(tmp_path).report(bytes(64))


def test_a_tdx_guest_is_refused_clearly(tmp_path: Path, milan) -> None:
    report, table = milan
    make_instance(tmp_path, provider="tdx_guest", outblob=report, auxblob=table, generations=[1, 2])
    with pytest.raises(EvidenceUnavailable, match="tdx_guest"):
        ConfigfsTsmProvider(tmp_path).report(milan_report_data(report))


def test_no_certificates_from_the_host(tmp_path: Path, milan) -> None:
    report, _ = milan
    make_instance(tmp_path, outblob=report, auxblob=b"", generations=[1, 2])
    with pytest.raises(EvidenceUnavailable, match="auxblob is empty"):
        ConfigfsTsmProvider(tmp_path).report(milan_report_data(report))


def test_a_vlek_table_is_named(tmp_path: Path, milan) -> None:
    report, _ = milan
    table = certificate_table([(VLEK_GUID, (MILAN / "vcek.der").read_bytes())])
    make_instance(tmp_path, outblob=report, auxblob=table, generations=[1, 2])
    with pytest.raises(EvidenceUnavailable, match="VLEK"):
        ConfigfsTsmProvider(tmp_path).report(milan_report_data(report))


def test_a_truncated_outblob_is_refused(tmp_path: Path, milan) -> None:
    report, table = milan
    make_instance(tmp_path, outblob=report[:100], auxblob=table, generations=[1, 2])
    with pytest.raises(EvidenceError, match="not an SEV-SNP report"):
        ConfigfsTsmProvider(tmp_path).report(milan_report_data(report))


def test_without_configfs_tsm_the_provider_says_why(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="not a confidential guest"):
        ConfigfsTsmProvider(tmp_path / "missing")


def test_privlevel_below_the_floor_is_refused(tmp_path: Path, milan) -> None:
    report, table = milan
    entry = make_instance(tmp_path, outblob=report, auxblob=table, generations=[1])
    (entry / "privlevel_floor").write_text("2\n")
    with pytest.raises(EvidenceUnavailable, match="below this guest's privlevel_floor 2"):
        ConfigfsTsmProvider(tmp_path, privlevel=1).report(milan_report_data(report))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (b"", "terminating entry"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 48, 10) + bytes(24), "outside the certificate area"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 0, 24) + bytes(24), "outside the certificate area"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 72, 1) * 2 + bytes(24) + b"x", "twice"),
    ],
)
def test_malformed_certificate_tables(table: bytes, message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        parse_certificate_table(table)
