"""The strict DER reader behind the certificate chain check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securetrain.core.snp import der
from securetrain.core.snp.der import DerDecodeError


def test_decodes_nested_values() -> None:
    encoded = der.encode(der.SEQUENCE, der.encode_integer(300) + der.encode(der.OCTET_STRING, b"ab"))
    value = der.decode(encoded)
    number, octets = value.children()
    assert value.encoding == encoded
    assert number.as_integer() == 300
    assert octets.as_octet_string() == b"ab"


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, -1, -128, -129, 2**70])
def test_integer_round_trip(value: int) -> None:
    assert der.decode(der.encode_integer(value)).as_integer() == value


@given(st.integers(min_value=-(2**600), max_value=2**600))
def test_integer_encoding_is_minimal_and_round_trips(value: int) -> None:
    assert der.decode(der.encode_integer(value)).as_integer() == value


def test_long_lengths_round_trip() -> None:
    content = bytes(70000)
    assert der.decode(der.encode(der.OCTET_STRING, content)).as_octet_string() == content


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (b"\x30\x80\x00\x00", "indefinite length"),
        (b"\x04\x81\x01\x00", "not minimally encoded"),
        (b"\x04\x82\x00\x81" + bytes(0x81), "not minimally encoded"),
        (b"\x04\x02\x00", "truncated"),
        (b"\x04", "truncated"),
        (b"\x04\x01\x00\x00", "follow the DER value"),
        (b"\x1f\x01\x00", "high-tag-number"),
        (b"\x04\x85\x01\x00\x00\x00\x00", "too long"),
    ],
)
def test_malformed_encodings_are_refused(encoded: bytes, message: str) -> None:
    with pytest.raises(DerDecodeError, match=message):
        der.decode(encoded)


@pytest.mark.parametrize("content", [b"\x00\x01", b"\xff\x80", b""])
def test_non_minimal_or_empty_integers_are_refused(content: bytes) -> None:
    with pytest.raises(DerDecodeError, match="INTEGER"):
        der.decode(der.encode(der.INTEGER, content)).as_integer()


def test_object_identifiers() -> None:
    assert der.decode(bytes.fromhex("06092a864886f70d01010a")).as_oid() == "1.2.840.113549.1.1.10"
    assert der.decode(bytes.fromhex("060a2b060104019c78010304")).as_oid() == "1.3.6.1.4.1.3704.1.3.4"
    with pytest.raises(DerDecodeError, match="not minimally encoded"):
        der.decode(bytes.fromhex("0603808001")).as_oid()
    with pytest.raises(DerDecodeError, match="unterminated"):
        der.decode(bytes.fromhex("060186")).as_oid()


def test_times_follow_rfc_5280() -> None:
    assert der.decode(der.encode(der.UTC_TIME, b"300403192343Z")).as_time() == datetime(
        2030, 4, 3, 19, 23, 43, tzinfo=UTC
    )
    # UTCTime years 50-99 are 19xx.
    assert der.decode(der.encode(der.UTC_TIME, b"500101000000Z")).as_time().year == 1950
    assert der.decode(der.encode(der.GENERALIZED_TIME, b"20500101000000Z")).as_time().year == 2050
    for bad in (b"3004031923Z", b"300403192343+0100", b"3O0403192343Z"):
        with pytest.raises(DerDecodeError, match="time"):
            der.decode(der.encode(der.UTC_TIME, bad)).as_time()


def test_type_mismatches_name_what_was_expected() -> None:
    with pytest.raises(DerDecodeError, match="expected tag 0x04"):
        der.decode(der.encode_integer(1)).as_octet_string()
    with pytest.raises(DerDecodeError, match="primitive"):
        der.decode(der.encode_integer(1)).children()
    with pytest.raises(DerDecodeError, match="BOOLEAN"):
        der.decode(b"\x01\x01\x01").as_boolean()
    with pytest.raises(DerDecodeError, match="whole octets"):
        der.decode(b"\x03\x02\x01\x80").as_bit_string()


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_the_specific_error(data: bytes) -> None:
    try:
        value = der.decode(data)
    except DerDecodeError:
        return
    assert value.encoding == data
