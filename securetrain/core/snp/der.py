"""A strict reader (and the few writers the simulation needs) for DER, the encoding of X.509.

Why our own reader rather than ``cryptography.x509``: AMD's VCEK certificates carry serial number 0,
which RFC 5280 forbids; cryptography 50 warns when it loads one and has announced that a future
release will refuse it. The verifier must keep accepting genuine AMD certificates, so it reads the
few certificate fields it needs itself (see :mod:`securetrain.core.snp.certs`) and leaves only the
cryptography — public-key parsing and signature checks — to pyca/cryptography.

The reader accepts DER only: definite, minimally encoded lengths, single-byte tags, minimally
encoded integers, nothing after the outermost value. Anything else raises :class:`DerDecodeError`;
it never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from securetrain.core.snp.errors import SnpEvidenceError

BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31

_CONSTRUCTED = 0x20
_HIGH_TAG_NUMBER = 0x1F
# Four length octets cover 4 GiB: far beyond any certificate; more is refused rather than parsed.
_MAX_LENGTH_OCTETS = 4
_STRING_CODECS = {UTF8_STRING: "utf-8", PRINTABLE_STRING: "ascii", IA5_STRING: "ascii"}


class DerDecodeError(SnpEvidenceError):
    """The bytes are not the strict DER encoding of the value that was expected."""


def context_tag(number: int, *, constructed: bool = True) -> int:
    """The identifier octet of context-specific tag ``[number]`` (``[3]`` constructed is ``0xA3``)."""
    return 0x80 | (_CONSTRUCTED if constructed else 0) | number


@dataclass(frozen=True)
class DerValue:
    """One decoded tag-length-value: its identifier octet, its content octets and its whole encoding."""

    tag: int
    content: bytes
    encoding: bytes

    def expect(self, tag: int, what: str) -> DerValue:
        """Return ``self`` if its tag is ``tag``; otherwise refuse, naming ``what`` was expected."""
        if self.tag != tag:
            raise DerDecodeError(f"{what}: expected tag 0x{tag:02x}, found 0x{self.tag:02x}")
        return self

    def children(self) -> list[DerValue]:
        """The values inside a constructed value (a SEQUENCE, a SET, an explicit tag)."""
        if not self.tag & _CONSTRUCTED:
            raise DerDecodeError(f"tag 0x{self.tag:02x} is primitive and has no children")
        values = []
        offset = 0
        while offset < len(self.content):
            value, offset = _read(self.content, offset)
            values.append(value)
        return values

    def as_integer(self) -> int:
        """An INTEGER (two's complement, big-endian), refusing non-minimal encodings."""
        self.expect(INTEGER, "INTEGER")
        content = self.content
        if not content:
            raise DerDecodeError("INTEGER has no content octets")
        if len(content) > 1 and (
            (content[0] == 0x00 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)
        ):
            raise DerDecodeError("INTEGER is not minimally encoded")
        return int.from_bytes(content, "big", signed=True)

    def as_boolean(self) -> bool:
        """A BOOLEAN: DER allows only 0x00 and 0xFF."""
        self.expect(BOOLEAN, "BOOLEAN")
        if self.content not in (b"\x00", b"\xff"):
            raise DerDecodeError("BOOLEAN must be a single octet 0x00 or 0xFF")
        return self.content == b"\xff"

    def as_octet_string(self) -> bytes:
        """The octets of an OCTET STRING."""
        return self.expect(OCTET_STRING, "OCTET STRING").content

    def as_bit_string(self) -> bytes:
        """The octets of a BIT STRING that holds whole octets (signatures and keys always do)."""
        content = self.expect(BIT_STRING, "BIT STRING").content
        if not content or content[0] != 0:
            raise DerDecodeError("BIT STRING does not hold whole octets")
        return content[1:]

    def as_oid(self) -> str:
        """An OBJECT IDENTIFIER in dotted form (``1.3.6.1.4.1.3704.1.4``)."""
        content = self.expect(OBJECT_IDENTIFIER, "OBJECT IDENTIFIER").content
        if not content or content[-1] & 0x80:
            raise DerDecodeError("OBJECT IDENTIFIER is empty or its last arc is unterminated")
        arcs: list[int] = []
        value = 0
        for index, octet in enumerate(content):
            starts_arc = index == 0 or not content[index - 1] & 0x80
            if starts_arc and octet == 0x80:
                raise DerDecodeError("OBJECT IDENTIFIER arc is not minimally encoded")
            value = (value << 7) | (octet & 0x7F)
            if not octet & 0x80:
                arcs.append(value)
                value = 0
        first = min(arcs[0] // 40, 2)
        return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))

    def as_string(self) -> str:
        """A UTF8String, PrintableString or IA5String, as text."""
        codec = _STRING_CODECS.get(self.tag)
        if codec is None:
            raise DerDecodeError(f"tag 0x{self.tag:02x} is not a supported string type")
        try:
            return self.content.decode(codec)
        except UnicodeDecodeError as exc:
            raise DerDecodeError(f"string is not valid {codec}: {exc.reason}") from None

    def as_time(self) -> datetime:
        """A UTCTime or GeneralizedTime in the form RFC 5280 requires (UTC, seconds, ``Z``)."""
        if self.tag == UTC_TIME:
            pattern, size = "%y%m%d%H%M%SZ", 13
        elif self.tag == GENERALIZED_TIME:
            pattern, size = "%Y%m%d%H%M%SZ", 15
        else:
            raise DerDecodeError(f"tag 0x{self.tag:02x} is not a time")
        text = self.content
        if len(text) != size or not text[:-1].isdigit():
            raise DerDecodeError(f"time {text!r} is not YYMMDDHHMMSSZ / YYYYMMDDHHMMSSZ")
        try:
            parsed = datetime.strptime(text.decode("ascii"), pattern)
        except (UnicodeDecodeError, ValueError):
            raise DerDecodeError(f"time {text!r} is not YYMMDDHHMMSSZ / YYYYMMDDHHMMSSZ") from None
        # strptime maps two-digit years 00-68 to 20xx, but RFC 5280 puts 50-99 in 19xx.
        if self.tag == UTC_TIME and parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
        return parsed.replace(tzinfo=UTC)


def decode(data: bytes) -> DerValue:
    """Decode ``data`` as exactly one DER value; trailing bytes are refused."""
    value, end = _read(data, 0)
    if end != len(data):
        raise DerDecodeError(f"{len(data) - end} bytes follow the DER value")
    return value


def _read(data: bytes, offset: int) -> tuple[DerValue, int]:
    start = offset
    if offset + 2 > len(data):
        raise DerDecodeError("truncated: no room for a tag and a length")
    tag = data[offset]
    if tag & _HIGH_TAG_NUMBER == _HIGH_TAG_NUMBER:
        raise DerDecodeError(f"tag 0x{tag:02x} uses the high-tag-number form, which X.509 never needs")
    first = data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerDecodeError("indefinite length is not DER")
        if count > _MAX_LENGTH_OCTETS or offset + count > len(data):
            raise DerDecodeError(f"length of {count} octets is truncated or too long")
        length = int.from_bytes(data[offset : offset + count], "big")
        if length < 0x80 or data[offset] == 0:
            raise DerDecodeError("length is not minimally encoded")
        offset += count
    end = offset + length
    if end > len(data):
        raise DerDecodeError(f"value of {length} bytes is truncated to {len(data) - offset}")
    return DerValue(tag, bytes(data[offset:end]), bytes(data[start:end])), end


def encode(tag: int, content: bytes) -> bytes:
    """The DER encoding of a value with identifier octet ``tag`` and ``content``."""
    length = len(content)
    if length < 0x80:
        header = bytes([tag, length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([tag, 0x80 | len(octets)]) + octets
    return header + content


def encode_integer(value: int) -> bytes:
    """The DER encoding of INTEGER ``value``."""
    magnitude = value if value >= 0 else ~value
    size = magnitude.bit_length() // 8 + 1
    return encode(INTEGER, value.to_bytes(size, "big", signed=True))
