"""The emulated CVM's measured boot: the workload extended into a PCR and recorded in a TCG2 event log.

On an Azure confidential VM the hardware report measures the paravisor, and HOST_DATA is zero: the workload is
bound through the vTPM instead, by measuring it into a PCR at boot, which the AK's quote then covers. The local
CVM does the same with the workload's measurement (:func:`securetrain.tee.workload.host_data`: code,
dependencies and the data owner keys it trusts).

Which PCR: **13**. The Linux TPM PCR Registry (the UAPI group's, which systemd follows) assigns PCR 13 to system
extension images, code added to the OS image at boot, which is what the workload is. Nothing else measures into
it on Azure's confidential VM images (the genuine evidence's PCR 13 is zero), PCRs 0-15 cannot be reset after
boot (PCR 16 and 23 can be from locality 0, so they could be set to a forged value), and it is inside the
quoted set (PCRs 0-23).

The event: ``EV_EVENT_TAG``, the PC Client Platform Firmware Profile's event for measurements the OS and its
applications make into PCRs 8-15 (systemd's tagged events are of this type; ``EV_IPL`` is the boot loader's, for
PCRs 8, 9, 12 and 14). Its data is a ``TCG_PCClientTaggedEvent``: the tag :data:`WORKLOAD_EVENT_TAG` (the first
four bytes of SHA-256 of ``securetrain workload``, little-endian: a vendor tag, named as systemd names its own),
the length, and the 32-byte workload measurement. Each bank is extended with the hash of the measurement in its
own algorithm, so a verifier reads the measurement from the log, hashes it and replays the PCR.

The log is the TCG PC Client Platform Firmware Profile's crypto-agile format (what Linux exposes as
``binary_bios_measurements`` and ``tpm2_eventlog`` reads): a ``Spec ID Event03`` header event in the SHA-1
format, then ``TCG_PCR_EVENT2`` entries with a digest for every active bank, little-endian.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

from securetrain.core.azure_cvm.workload import WORKLOAD_PCR
from securetrain.core.fsutil import atomic_output
EV_NO_ACTION = 0x00000003
EV_EVENT_TAG = 0x00000006
WORKLOAD_EVENT_TAG = 0x3D51468A
#: The banks an event log can record: TCG algorithm id and hashlib name.
BANKS = {"sha1": TPM2_ALG.SHA1, "sha256": TPM2_ALG.SHA256, "sha384": TPM2_ALG.SHA384, "sha512": TPM2_ALG.SHA512}

_SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
_PLATFORM_CLASS_CLIENT = 0
# The PC Client Platform Firmware Profile 2.0 (specVersionMajor 2, minor 0, errata 0); UINTN is 64-bit (2).
_SPEC_VERSION = (0, 2, 0)
_UINTN_SIZE_64 = 2


def workload_event(measurement: bytes) -> bytes:
    """The tagged event recording the workload's measurement."""
    return struct.pack("<II", WORKLOAD_EVENT_TAG, len(measurement)) + measurement


class TcgEventLog:
    """A crypto-agile TCG event log for the PCR banks ``banks`` (names of :data:`BANKS`)."""

    def __init__(self, banks: Sequence[str]) -> None:
        unknown = sorted(set(banks) - set(BANKS))
        if unknown:
            raise ValueError(f"no event log for PCR banks {unknown}")
        self._banks = tuple(banks)
        self._events: list[bytes] = [self._spec_id_event()]

    def record(self, pcr: int, event_type: int, event: bytes, measured: bytes) -> dict[str, bytes]:
        """Append ``event`` with the hashes of ``measured`` as its digests; return them, by bank."""
        digests = {bank: hashlib.new(bank, measured).digest() for bank in self._banks}
        entry = struct.pack("<III", pcr, event_type, len(digests))
        entry += b"".join(struct.pack("<H", BANKS[bank]) + digest for bank, digest in digests.items())
        self._events.append(entry + struct.pack("<I", len(event)) + event)
        return digests

    def to_bytes(self) -> bytes:
        """The log as a file holds it."""
        return b"".join(self._events)

    def _spec_id_event(self) -> bytes:
        minor, major, errata = _SPEC_VERSION
        spec_id = _SPEC_ID_SIGNATURE + struct.pack("<IBBBBI", _PLATFORM_CLASS_CLIENT, minor, major, errata,
                                                   _UINTN_SIZE_64, len(self._banks))  # fmt: skip
        spec_id += b"".join(struct.pack("<HH", BANKS[bank], hashlib.new(bank).digest_size) for bank in self._banks)
        spec_id += b"\0"  # no vendor information
        # The header event keeps the SHA-1 log format: one 20-byte digest, all zero for EV_NO_ACTION.
        return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec_id)) + spec_id


def measure_workload(esapi: ESAPI, measurement: bytes, banks: Sequence[str], event_log: Path) -> None:
    """Extend :data:`WORKLOAD_PCR` with the workload's event in every bank and write the boot's event log."""
    log = TcgEventLog(banks)
    digests = log.record(WORKLOAD_PCR, EV_EVENT_TAG, workload_event(measurement), measurement)
    values = TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=BANKS[bank], digest=TPMU_HA(**{bank: digest})) for bank, digest in digests.items()]
    )
    esapi.pcr_extend(ESYS_TR(ESYS_TR.PCR0 + WORKLOAD_PCR), values)
    event_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_output(event_log, mode=0o644) as out:
        out.write(log.to_bytes())
