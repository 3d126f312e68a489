"""Reading the fixed and length-prefixed fields of an SPDM message, every length checked."""

from __future__ import annotations

from securetrain.core.nvidia.errors import SpdmFormatError


class FieldReader:
    """Reads fields off the front of ``data``, refusing a field the remaining bytes cannot hold.

    ``what`` names the structure in errors; :meth:`finish` refuses bytes left after the last field, so a
    structure is either read whole or refused.
    """

    def __init__(self, data: bytes, what: str) -> None:
        self._data = bytes(data)
        self._offset = 0
        self._what = what

    def take(self, size: int, field: str) -> bytes:
        """The next ``size`` bytes, called ``field`` in errors."""
        end = self._offset + size
        if end > len(self._data):
            raise SpdmFormatError(
                f"{self._what}: {field} needs {size} bytes at offset {self._offset}, "
                f"only {len(self._data) - self._offset} remain"
            )
        value = self._data[self._offset : end]
        self._offset = end
        return value

    def u8(self, field: str) -> int:
        """The next byte as an integer."""
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        """The next two bytes as a little-endian integer."""
        return int.from_bytes(self.take(2, field), "little")

    def u24(self, field: str) -> int:
        """The next three bytes as a little-endian integer."""
        return int.from_bytes(self.take(3, field), "little")

    @property
    def remaining(self) -> int:
        """How many bytes are left to read."""
        return len(self._data) - self._offset

    def finish(self) -> None:
        """Refuse the structure if any byte follows its last field."""
        if self.remaining:
            raise SpdmFormatError(f"{self._what}: {self.remaining} bytes follow its last field")
