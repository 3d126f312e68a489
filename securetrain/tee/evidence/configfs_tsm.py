"""Evidence from a real SEV-SNP guest through Linux configfs-tsm (``/sys/kernel/config/tsm/report``).

The kernel ABI (Documentation/ABI/testing/configfs-tsm-report, Linux 6.7+): a directory made under
``report/`` is a report instance with these attributes:

    provider    (RO) which TSM answers: ``sev_guest`` on SEV-SNP, ``tdx_guest`` on TDX
    inblob      (WO) up to 64 bytes of caller data: SEV-SNP's REPORT_DATA
    privlevel   (WO) SEV-SNP: the VMPL the report is requested for (not below ``privlevel_floor``)
    outblob     (RO) the report generated for the current inputs (SEV-SNP: the raw ATTESTATION_REPORT)
    auxblob     (RO) SEV-SNP: the certificate table the host supplied (VCEK, ASK, ARK), if it did
    generation  (RO) incremented by every write to an input attribute

Several processes may share an instance, so a write of someone else between our ``inblob`` and our
read of ``outblob`` would hand us their report. The ABI's answer is ``generation``: read it before
writing, and after reading the blobs it must have advanced by exactly our number of writes. We also
check that the report carries our REPORT_DATA, and we give the agent an instance of its own.

The certificate table (GHCB specification, extended guest request) is a list of 24-byte entries
``GUID (16 bytes, RFC 4122 order) | offset (u32 LE) | length (u32 LE)`` ended by an all-zero entry,
each pointing at a DER certificate in the same buffer.

This provider cannot run on the development machines (they are no SEV-SNP guests); it is unit-tested
against a directory tree laid out like the kernel's (tests/unit/test_evidence_configfs_tsm.py). TDX
guests expose the same interface, but their quotes need another attestation request shape, so a
``tdx_guest`` provider is refused with a clear error instead of sending a quote as an SNP report.
"""

from __future__ import annotations

import logging
import os
import struct
import uuid
from pathlib import Path

from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import AttestationReport
from securetrain.tee.evidence.base import Evidence, EvidenceError, EvidenceUnavailable, check_report_data

log = logging.getLogger(__name__)

DEFAULT_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_PROVIDER = "sev_guest"
# The GUIDs of the GHCB specification's certificate table.
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_ENTRY = struct.Struct("<16sII")


class ConcurrentReportRequest(EvidenceError):
    """Another writer changed the report instance while we used it; the report may not be ours."""


def parse_certificate_table(table: bytes) -> dict[uuid.UUID, bytes]:
    """The certificates of an SEV-SNP certificate table, by GUID; :class:`EvidenceError` if malformed."""
    entries: list[tuple[uuid.UUID, int, int]] = []
    position = 0
    while True:
        if position + _ENTRY.size > len(table):
            raise EvidenceError("the certificate table (auxblob) ends without its all-zero terminating entry")
        raw_guid, offset, length = _ENTRY.unpack_from(table, position)
        position += _ENTRY.size
        if raw_guid == bytes(16) and offset == 0 and length == 0:
            break
        entries.append((uuid.UUID(bytes=raw_guid), offset, length))
    certificates: dict[uuid.UUID, bytes] = {}
    for guid, offset, length in entries:
        # Certificates lie after the entries; anything else would read the table itself as a certificate.
        if offset < position or length == 0 or offset + length > len(table):
            raise EvidenceError(
                f"certificate table entry {guid} points outside the certificate area (offset {offset}, "
                f"length {length}; entries end at {position}, table is {len(table)} bytes)"
            )
        if guid in certificates:
            raise EvidenceError(f"certificate table lists {guid} twice")
        certificates[guid] = table[offset : offset + length]
    return certificates


class ConfigfsTsmProvider:
    """SEV-SNP evidence from this guest's kernel via configfs-tsm.

    ``instance`` is the name of the agent's own report instance under ``root`` (made if absent and kept:
    re-attestations reuse it). ``privlevel`` is the VMPL to request, or None for the kernel's default.
    """

    tee_type = "sev-snp"

    def __init__(
        self, root: Path = DEFAULT_REPORT_ROOT, *, instance: str = "securetrain-agent", privlevel: int | None = None
    ) -> None:
        if not root.is_dir():
            raise EvidenceUnavailable(
                f"{root} does not exist: this is not a confidential guest with configfs-tsm (Linux 6.7+, "
                "configfs mounted at /sys/kernel/config); on the local stack use the simulated provider"
            )
        if privlevel is not None and not 0 <= privlevel <= 3:
            raise EvidenceUnavailable(f"privlevel must be a VMPL from 0 to 3, got {privlevel}")
        self._entry = root / instance
        self._privlevel = privlevel

    def report(self, report_data: bytes) -> Evidence:
        outblob, auxblob = self._request(report_data, "outblob", "auxblob")
        return Evidence(outblob, self._chain_pem(auxblob))

    def attestation_report(self, report_data: bytes) -> bytes:
        """The report alone, for a platform whose certificates come another way than the host's table
        (Azure Container Instances: :mod:`securetrain.tee.evidence.azure_aci`)."""
        (outblob,) = self._request(report_data, "outblob")
        return outblob

    def _request(self, report_data: bytes, *blobs: str) -> tuple[bytes, ...]:
        """Write ``report_data`` and read ``blobs`` (``outblob`` first) as one uncontended generation."""
        check_report_data(report_data)
        self._entry.mkdir(mode=0o700, exist_ok=True)
        provider = self._read_text("provider")
        if provider != SEV_GUEST_PROVIDER:
            raise EvidenceUnavailable(
                f"configfs-tsm provider is {provider!r}; only {SEV_GUEST_PROVIDER!r} (SEV-SNP) evidence can be "
                "attested by this trainer"
            )
        before = self._generation()
        writes = 0
        if self._privlevel is not None:
            self._check_privlevel_floor()
            self._write("privlevel", str(self._privlevel).encode())
            writes += 1
        self._write("inblob", report_data)
        writes += 1
        values = tuple(self._read(name) for name in blobs)
        after = self._generation()
        if after != before + writes:
            raise ConcurrentReportRequest(
                f"{self._entry}/generation went from {before} to {after} across our {writes} write(s): another "
                "process used this report instance at the same time; retry with an instance of its own"
            )
        self._checked_report(values[0], report_data)
        return values

    def _checked_report(self, outblob: bytes, report_data: bytes) -> None:
        try:
            report = AttestationReport.from_bytes(outblob)
        except SnpEvidenceError as exc:
            raise EvidenceError(f"{self._entry}/outblob is not an SEV-SNP report: {exc}") from None
        if report.report_data != report_data:
            raise EvidenceError(
                f"{self._entry}/outblob carries REPORT_DATA {report.report_data.hex()[:32]}…, not the "
                f"{report_data.hex()[:32]}… written to inblob"
            )
        if self._privlevel is not None and report.vmpl != self._privlevel:
            raise EvidenceError(f"the report is for VMPL {report.vmpl}, not the requested {self._privlevel}")

    def _chain_pem(self, auxblob: bytes) -> bytes:
        if not auxblob:
            raise EvidenceUnavailable(
                f"{self._entry}/auxblob is empty: the host supplied no certificates with the report; configure "
                "the host's certificate table (e.g. `snphost import`), the trainer does not reach AMD's key server"
            )
        certificates = parse_certificate_table(auxblob)
        if VCEK_GUID not in certificates:
            has_vlek = VLEK_GUID in certificates
            vlek = " (it holds a VLEK, which this attestation flow does not accept)" if has_vlek else ""
            raise EvidenceUnavailable(f"the host's certificate table has no VCEK{vlek}")
        missing = [name for name, guid in (("ASK", ASK_GUID), ("ARK", ARK_GUID)) if guid not in certificates]
        if missing:
            raise EvidenceUnavailable(f"the host's certificate table lacks the {' and '.join(missing)} certificate")
        try:
            chain = CertificateChain.load(certificates[VCEK_GUID], certificates[ASK_GUID], certificates[ARK_GUID])
        except SnpEvidenceError as exc:
            raise EvidenceError(f"the host's certificate table holds a malformed certificate: {exc}") from None
        return chain.to_pem_bundle()

    def _check_privlevel_floor(self) -> None:
        floor_file = self._entry / "privlevel_floor"
        if floor_file.exists():
            floor = int(self._read_text("privlevel_floor"))
            if self._privlevel is not None and self._privlevel < floor:
                raise EvidenceUnavailable(f"VMPL {self._privlevel} is below this guest's privlevel_floor {floor}")

    def _generation(self) -> int:
        text = self._read_text("generation")
        try:
            return int(text)
        except ValueError:
            raise EvidenceError(f"{self._entry}/generation is not a number: {text!r}") from None

    def _read(self, name: str) -> bytes:
        try:
            return (self._entry / name).read_bytes()
        except OSError as exc:
            raise EvidenceUnavailable(f"cannot read {self._entry / name}: {exc.strerror or exc}") from None

    def _read_text(self, name: str) -> str:
        return self._read(name).decode("ascii", errors="replace").strip()

    def _write(self, name: str, data: bytes) -> None:
        # One write() call: configfs takes an attribute's value from a single write.
        try:
            descriptor = os.open(self._entry / name, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise EvidenceUnavailable(f"cannot open {self._entry / name}: {exc.strerror or exc}") from None
        try:
            written = os.write(descriptor, data)
        except OSError as exc:
            raise EvidenceUnavailable(f"the kernel refused the write to {self._entry / name}: {exc.strerror}") from None
        finally:
            os.close(descriptor)
        if written != len(data):
            raise EvidenceError(f"only {written} of {len(data)} bytes reached {self._entry / name}")
