"""A TPM 2.0 quote as an Azure vTPM gives it: TPM2B_ATTEST (a TPMS_ATTEST of type quote), then TPMT_SIGNATURE.

Structures from the TCG TPM 2.0 Library, Part 2 (all integers big-endian, every TPM2B a 16-bit size then
that many bytes)::

    TPMS_ATTEST       magic u32 = TPM_GENERATED_VALUE 0xff544347
                      type u16 = TPM_ST_ATTEST_QUOTE 0x8018
                      qualifiedSigner TPM2B_NAME, extraData TPM2B_DATA
                      clockInfo TPMS_CLOCK_INFO {clock u64, resetCount u32, restartCount u32, safe u8}
                      firmwareVersion u64
                      attested TPMS_QUOTE_INFO {pcrSelect TPML_PCR_SELECTION, pcrDigest TPM2B_DIGEST}
    TPML_PCR_SELECTION count u32, then count x {hash u16, sizeofSelect u8, pcrSelect[sizeofSelect]}
    TPMT_SIGNATURE    sigAlg u16, hash u16, TPM2B_PUBLIC_KEY_RSA (for RSASSA)

Only what an Azure vTPM quote uses is accepted — a SHA-256 signer name, one PCR selection of the SHA-256
bank over some of PCRs 0-23, RSASSA with SHA-256 — and every byte must be consumed: anything else is refused
rather than skipped. The structures are read with :mod:`struct` over a cursor: a verifier parses, it
does not drive a TPM, so no TPM library is needed (and none would be as strict about trailing bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
TPM_ALG_RSASSA = 0x0014
SHA256_SIZE = 32
#: A PC-client TPM has 24 PCRs, and its profile fixes PCR_SELECT_MIN = PCR_SELECT_MAX = 3 bytes of selection.
PCR_COUNT = 24
PCR_SELECT_SIZE = PCR_COUNT // 8
#: TPM2B_DATA holds at most a TPMT_HA (sizeof: a 2-byte algorithm and a SHA-512 digest); the nonce is smaller.
MAX_EXTRA_DATA = 64
_MAX_RSA_SIGNATURE = 512


def _refuse(reason: str) -> CvmEvidenceError:
    return CvmEvidenceError(Check.QUOTE_LAYOUT, reason)


class Cursor:
    """Reads big-endian TPM fields from ``data`` in order; refuses (as ``check``) to read past its end."""

    def __init__(self, data: bytes, what: str, check: Check = Check.QUOTE_LAYOUT) -> None:
        self._data = data
        self._offset = 0
        self._what = what
        self._check = check

    def refuse(self, reason: str) -> CvmEvidenceError:
        return CvmEvidenceError(self._check, reason)

    def take(self, size: int, field: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise self.refuse(f"{self._what} ends inside {field} (offset {self._offset}, {size} bytes wanted)")
        value = self._data[self._offset : end]
        self._offset = end
        return bytes(value)

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return struct.unpack(">H", self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return struct.unpack(">I", self.take(4, field))[0]

    def u64(self, field: str) -> int:
        return struct.unpack(">Q", self.take(8, field))[0]

    def tpm2b(self, field: str, maximum: int) -> bytes:
        size = self.u16(f"{field} size")
        if size > maximum:
            raise self.refuse(f"{field} is {size} bytes, more than {maximum}")
        return self.take(size, field)

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._offset, "the rest")

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise self.refuse(f"{len(self._data) - self._offset} bytes follow the {self._what}")


def tpm2b(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO: the TPM's clock and reset counters when it signed."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class QuoteAttestation:
    """A TPMS_ATTEST of type quote, over one selection of the SHA-256 PCR bank."""

    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_indexes: tuple[int, ...]
    pcr_digest: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteAttestation:
        cursor = Cursor(data, "TPMS_ATTEST")
        magic = cursor.u32("magic")
        if magic != TPM_GENERATED_VALUE:
            raise _refuse(f"magic is 0x{magic:08x}, not TPM_GENERATED_VALUE 0x{TPM_GENERATED_VALUE:08x}")
        kind = cursor.u16("type")
        if kind != TPM_ST_ATTEST_QUOTE:
            raise _refuse(f"type is 0x{kind:04x}, not TPM_ST_ATTEST_QUOTE 0x{TPM_ST_ATTEST_QUOTE:04x}")
        signer = cursor.tpm2b("qualifiedSigner", 2 + SHA256_SIZE)
        if len(signer) != 2 + SHA256_SIZE or struct.unpack(">H", signer[:2])[0] != TPM_ALG_SHA256:
            raise _refuse("qualifiedSigner is not a SHA-256 TPM name")
        extra_data = cursor.tpm2b("extraData", MAX_EXTRA_DATA)
        clock_info = ClockInfo(
            clock=cursor.u64("clock"),
            reset_count=cursor.u32("resetCount"),
            restart_count=cursor.u32("restartCount"),
            safe=_yes_no(cursor.u8("safe")),
        )
        firmware_version = cursor.u64("firmwareVersion")
        count = cursor.u32("pcrSelect count")
        if count != 1:
            raise _refuse(f"the quote selects {count} PCR banks; exactly one, SHA-256, is accepted")
        bank = cursor.u16("pcrSelect hash")
        if bank != TPM_ALG_SHA256:
            raise _refuse(f"the quote selects PCR bank 0x{bank:04x}; only SHA-256 (0x{TPM_ALG_SHA256:04x}) is accepted")
        select_size = cursor.u8("sizeofSelect")
        if select_size != PCR_SELECT_SIZE:
            raise _refuse(f"sizeofSelect is {select_size}, not {PCR_SELECT_SIZE} (24 PCRs)")
        bitmap = cursor.take(select_size, "pcrSelect")
        # PCR n is bit n % 8 of byte n // 8 (Part 2, TPMS_PCR_SELECT): indexes in ascending order, as the TPM hashes them.
        indexes = tuple(n for n in range(PCR_COUNT) if bitmap[n // 8] >> n % 8 & 1)
        if not indexes:
            raise _refuse("the quote selects no PCR")
        digest = cursor.tpm2b("pcrDigest", SHA256_SIZE)
        if len(digest) != SHA256_SIZE:
            raise _refuse(f"pcrDigest is {len(digest)} bytes, not a SHA-256 digest")
        cursor.finish()
        return cls(signer, extra_data, clock_info, firmware_version, indexes, digest)

    def to_bytes(self) -> bytes:
        """The TPMS_ATTEST bytes; ``from_bytes(b).to_bytes() == b`` for every ``b`` that ``from_bytes`` accepts."""
        bitmap = bytearray(PCR_SELECT_SIZE)
        for n in self.pcr_indexes:
            bitmap[n // 8] |= 1 << n % 8
        clock = self.clock_info
        return (
            struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE)
            + tpm2b(self.qualified_signer)
            + tpm2b(self.extra_data)
            + struct.pack(">QIIBQ", clock.clock, clock.reset_count, clock.restart_count, clock.safe, self.firmware_version)
            + struct.pack(">IHB", 1, TPM_ALG_SHA256, PCR_SELECT_SIZE)
            + bytes(bitmap)
            + tpm2b(self.pcr_digest)
        )


def _yes_no(value: int) -> bool:
    if value not in (0, 1):
        raise _refuse(f"clockInfo.safe is {value}, not TPMI_YES_NO 0 or 1")
    return bool(value)


@dataclass(frozen=True)
class QuoteSignature:
    """A TPMT_SIGNATURE: RSASSA-PKCS1-v1_5 with SHA-256, the only scheme an Azure vTPM's AK signs with."""

    signature: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteSignature:
        cursor = Cursor(data, "TPMT_SIGNATURE")
        algorithm = cursor.u16("sigAlg")
        if algorithm != TPM_ALG_RSASSA:
            raise _refuse(f"signature algorithm 0x{algorithm:04x} is not RSASSA (0x{TPM_ALG_RSASSA:04x})")
        hash_algorithm = cursor.u16("signature hash")
        if hash_algorithm != TPM_ALG_SHA256:
            raise _refuse(f"signature hash 0x{hash_algorithm:04x} is not SHA-256 (0x{TPM_ALG_SHA256:04x})")
        signature = cursor.tpm2b("signature", _MAX_RSA_SIGNATURE)
        if not signature:
            raise _refuse("the signature is empty")
        cursor.finish()
        return cls(signature)

    def to_bytes(self) -> bytes:
        """The TPMT_SIGNATURE bytes."""
        return struct.pack(">HH", TPM_ALG_RSASSA, TPM_ALG_SHA256) + tpm2b(self.signature)


@dataclass(frozen=True)
class TpmQuote:
    """A quote: the attestation, its exact signed bytes, and the signature over them."""

    attested: bytes
    attestation: QuoteAttestation
    signature: QuoteSignature

    @classmethod
    def from_bytes(cls, data: bytes) -> TpmQuote:
        """Read TPM2B_ATTEST followed by TPMT_SIGNATURE, and nothing else."""
        cursor = Cursor(data, "quote")
        size = cursor.u16("TPM2B_ATTEST size")
        attested = cursor.take(size, "TPMS_ATTEST")
        return cls(attested, QuoteAttestation.from_bytes(attested), QuoteSignature.from_bytes(cursor.rest()))

    def to_bytes(self) -> bytes:
        """TPM2B_ATTEST then TPMT_SIGNATURE, as :meth:`from_bytes` reads them."""
        return tpm2b(self.attested) + self.signature.to_bytes()
