"""The CCE policy file: hashed here, never trusted for its hostdata line, read strictly."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.aci.cce_policy import MAX_POLICY_FILE_BYTES, CcePolicy
from securetrain.core.aci.errors import AciEvidenceError
from tests.aci_evidence import CCE_POLICY, REPORT

GENUINE_HOST_DATA = REPORT[0xC0:0xE0]
REGO = base64.b64decode(CCE_POLICY.split(b"ccepolicy:")[1].split()[0])


def policy_file(rego: bytes, hostdata: str | None = None) -> bytes:
    text = f"ccepolicy: {base64.b64encode(rego).decode()}\n"
    if hostdata is not None:
        text += f"hostdata: {hostdata}\n"
    return text.encode()


def refused(data: bytes, reason: str) -> None:
    with pytest.raises(AciEvidenceError, match=reason) as caught:
        CcePolicy.parse(data)
    assert caught.value.check == "cce-policy"


def test_genuine_policy_hashes_to_the_genuine_host_data() -> None:
    policy = CcePolicy.parse(CCE_POLICY)
    assert policy.rego.startswith(b"package policy")
    assert policy.sha256 == hashlib.sha256(REGO).digest() == GENUINE_HOST_DATA
    assert policy.sha256.hex() == "73973b78d70cc68353426de188db5dfc57e5b766e399935fb73a61127ea26d20"


def test_hostdata_line_is_optional_and_never_what_is_used() -> None:
    assert CcePolicy.parse(policy_file(REGO)).sha256 == GENUINE_HOST_DATA
    assert CcePolicy.parse(policy_file(REGO, GENUINE_HOST_DATA.hex().upper())).sha256 == GENUINE_HOST_DATA


def test_a_file_whose_hostdata_line_contradicts_its_policy_is_refused() -> None:
    refused(policy_file(REGO, "00" * 32), "contradicts itself")
    # One byte of the policy changed, the old hostdata line kept: the file no longer agrees with itself.
    changed = REGO[:10] + bytes([REGO[10] ^ 1]) + REGO[11:]
    refused(policy_file(changed, GENUINE_HOST_DATA.hex()), "contradicts itself")
    assert CcePolicy.parse(policy_file(changed)).sha256 != GENUINE_HOST_DATA


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no 'ccepolicy:' line"),
        (b"hostdata: " + GENUINE_HOST_DATA.hex().encode(), "no 'ccepolicy:' line"),
        (b"ccepolicy: !!!!", "not base64"),
        (b"ccepolicy: ", "empty"),
        (b"ccepolicy: cGFja2FnZQ", "not base64"),
        (b"ccepolicy: cGFja2FnZR==", "not canonical"),
        (CCE_POLICY + b"\nccepolicy: cGFja2FnZQ==\n", "repeats 'ccepolicy'"),
        (CCE_POLICY + b"\npolicy: x\n", "line 3"),
        (b"# comment\n" + CCE_POLICY, "line 1"),
        ("ccepolicy: é".encode(), "not ASCII"),
        (b"ccepolicy: " + b"A" * MAX_POLICY_FILE_BYTES, "at most"),
    ],
)
def test_malformed_files_are_refused(data: bytes, reason: str) -> None:
    refused(data, reason)


def test_blank_lines_and_crlf_are_read() -> None:
    assert CcePolicy.parse(b"\r\n" + CCE_POLICY.replace(b"\n", b"\r\n") + b"\n\n").sha256 == GENUINE_HOST_DATA


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512) | st.text(max_size=300).map(str.encode))
def test_arbitrary_files_raise_only_the_project_error(data: bytes) -> None:
    try:
        CcePolicy.parse(data)
    except AciEvidenceError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(CCE_POLICY) - 1), st.integers(1, 255))
def test_every_changed_byte_is_refused_or_changes_the_hash(offset: int, mask: int) -> None:
    changed = CCE_POLICY[:offset] + bytes([CCE_POLICY[offset] ^ mask]) + CCE_POLICY[offset + 1 :]
    try:
        policy = CcePolicy.parse(changed)
    except AciEvidenceError:
        return
    if policy.sha256 != GENUINE_HOST_DATA:
        return  # another policy: the verifier's host-data check refuses it
    # The same policy: only whitespace, or the case of the hostdata hex digits, changed.
    assert changed.lower().split() == CCE_POLICY.lower().split()
