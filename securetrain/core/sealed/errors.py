"""Why a sealed file could not be made or opened: one exception and one exit code per way it can fail, so
a script can tell a wrong key from tampering without parsing messages (table: docs/formats.md, "Errors").
All but :class:`SealInputError` are security violations: nothing may be trusted from a file that raised one.
"""

from __future__ import annotations

from securetrain.core.errors import ConfigurationError, SecurityViolation


class SealedFileError(SecurityViolation):
    """A sealed file failed a check; nothing read from it may be used."""


class MalformedHeader(SealedFileError):
    """The bytes do not parse as a sealed-file header (wrong magic, bad length, bad JSON, bad field)."""

    exit_code = 10


class UnsupportedVersion(SealedFileError):
    """The header names a format version this release does not know."""

    exit_code = 11


class WrongKey(SealedFileError):
    """The key offered is not the one the file was sealed for, or it cannot unwrap the data key."""

    exit_code = 12


class WrongContext(SealedFileError):
    """The caller expected another context (dataset id, classification, ...) than the one sealed."""

    exit_code = 13


class HeaderTampered(SealedFileError):
    """The header's authentication tag does not match: a header field was changed after sealing."""

    exit_code = 14


class SegmentTampered(SealedFileError):
    """A segment failed authentication: its bytes were changed (a bit flip, corruption)."""

    exit_code = 15

    def __init__(self, message: str, *, segment: int) -> None:
        super().__init__(message)
        self.segment = segment


class SegmentOutOfOrder(SealedFileError):
    """An authentic segment stands at the wrong position: segments were reordered or duplicated."""

    exit_code = 16

    def __init__(self, message: str, *, position: int, segment: int) -> None:
        super().__init__(message)
        self.position = position
        self.segment = segment


class Truncated(SealedFileError):
    """The file ends before its final segment."""

    exit_code = 17


class TrailingData(SealedFileError):
    """Bytes follow the final segment."""

    exit_code = 18


class PlaintextDigestMismatch(SealedFileError):
    """The opened plaintext's SHA-256 differs from the one the header records."""

    exit_code = 19


class SealInputError(ConfigurationError):
    """What was asked to be sealed cannot be: not seekable, changed while sealing, a bad argument."""
