"""The confidential computing enforcement (CCE) policy of an ACI container group, and the HOST_DATA it binds.

The CCE policy is the Rego program the utility VM enforces on the containers (which images, commands,
environment, mounts); ACI launches the UVM with HOST_DATA = SHA-256 of the policy, so the SNP report names
the workload by the hash of its policy. It travels base64-encoded (ARM's
``confidentialComputeProperties.ccePolicy``); the file read here is the shape azure-cleanroom writes::

    ccepolicy: <base64 of the Rego policy>
    hostdata: <hex SHA-256 of the policy>      (optional)

The digest is always computed here, from the decoded policy. The ``hostdata`` line is never what is
compared with the report; when present it must equal the computed digest, so a file that contradicts itself
(edited, or its two lines taken from different policies) is refused instead of silently half-used. Anything
else in the file is refused too. Each refusal is an
:class:`~securetrain.core.aci.errors.AciEvidenceError` with check ``cce-policy``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import NoReturn

from securetrain.core.aci.errors import AciEvidenceError

#: Generous for a real policy (a few KiB to a few hundred KiB of base64), small enough to read at once.
MAX_POLICY_FILE_BYTES = 1 << 20
_POLICY_KEY = "ccepolicy"
_HOST_DATA_KEY = "hostdata"


@dataclass(frozen=True)
class CcePolicy:
    """A CCE policy: the Rego program as ACI hashes it (the base64-decoded bytes)."""

    rego: bytes

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the policy: the HOST_DATA of a UVM launched with it."""
        return hashlib.sha256(self.rego).digest()

    @classmethod
    def parse(cls, data: bytes) -> CcePolicy:
        """Read a policy file of the shape above."""
        if len(data) > MAX_POLICY_FILE_BYTES:
            _refuse(f"the policy file is {len(data)} bytes; at most {MAX_POLICY_FILE_BYTES} are accepted")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            _refuse("the policy file is not ASCII text (base64 and hex only)")
        fields: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            key, separator, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if not separator or key not in (_POLICY_KEY, _HOST_DATA_KEY):
                _refuse(f"line {number} is not 'ccepolicy: <base64>' or 'hostdata: <hex>'")
            if key in fields:
                _refuse(f"line {number} repeats {key!r}")
            fields[key] = value
        if _POLICY_KEY not in fields:
            _refuse("the policy file has no 'ccepolicy:' line")
        policy = cls(_base64(fields[_POLICY_KEY]))
        if _HOST_DATA_KEY in fields:
            stated = fields[_HOST_DATA_KEY]
            if stated.lower() != policy.sha256.hex():
                _refuse(
                    f"the file states hostdata {stated!r}, but the SHA-256 of its policy is {policy.sha256.hex()}: "
                    "the file contradicts itself"
                )
        return policy


def _base64(text: str) -> bytes:
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _refuse("ccepolicy is not base64")
    if not value:
        _refuse("ccepolicy is empty")
    # Only the canonical encoding, so that one file means one policy.
    if base64.b64encode(value).decode() != text:
        _refuse("ccepolicy is not canonical base64")
    return value


def _refuse(message: str) -> NoReturn:
    raise AciEvidenceError("cce-policy", message)
