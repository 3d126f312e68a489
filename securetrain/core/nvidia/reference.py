"""Reference measurements a GPU report must match: the golden values of NVIDIA's RIMs.

NVIDIA publishes a reference integrity manifest (RIM, a signed TCG/ISO SWID tag) per driver version and per
VBIOS version. Each lists measurement entries by index with one or more alternative SHA-384 values and an
``active`` flag; NVIDIA's verifier merges the active entries of the driver RIM and the VBIOS RIM (an index
claimed by both is an error) and requires the report's measurement at every such index to equal one of its
alternatives. Indices no RIM names are not compared.

This module holds those golden values and makes that comparison, offline. Fetching a RIM from NVIDIA's RIM
service and verifying its XML signature up to NVIDIA's RIM root is not done here: the reference values are
configuration, taken from RIMs their operator has verified (docs/attestation.md says how), as the SEV-SNP
launch measurement is pinned in the attestation policy rather than fetched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from securetrain.core.errors import ConfigurationError
from securetrain.core.nvidia.errors import GpuEvidenceError

_SHA384_SIZE = 48


class MeasurementMismatch(GpuEvidenceError):
    """A measurement of the GPU report differs from every reference value for its index."""


@dataclass(frozen=True)
class ReferenceMeasurements:
    """Golden values by measurement index (each a set of alternatives) and where they come from."""

    source: str
    golden: Mapping[int, frozenset[bytes]]

    def __post_init__(self) -> None:
        if not self.golden:
            raise ConfigurationError(f"reference measurements {self.source!r} name no index")
        for index, alternatives in self.golden.items():
            if not 0 < index < 0xFF:
                raise ConfigurationError(f"reference measurements {self.source!r}: index {index} is not 1-254")
            if not alternatives or any(len(value) != _SHA384_SIZE for value in alternatives):
                raise ConfigurationError(
                    f"reference measurements {self.source!r}: index {index} needs SHA-384 values (48 bytes)"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceMeasurements:
        """Read ``{"source": ..., "measurements": {"<index>": ["<hex>", ...], ...}}``."""
        try:
            golden = {
                int(index): frozenset(bytes.fromhex(value) for value in values)
                for index, values in dict(data["measurements"]).items()
            }
            return cls(str(data["source"]), golden)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"reference measurements are malformed: {exc}") from None

    def check(self, measurements: Mapping[int, bytes]) -> None:
        """Refuse unless every golden index is measured and equals one of its alternatives."""
        for index in sorted(self.golden):
            value = measurements.get(index)
            if value is None:
                raise MeasurementMismatch(f"GPU report has no measurement at index {index}, which {self.source} requires")
            if value not in self.golden[index]:
                raise MeasurementMismatch(
                    f"GPU measurement {index} is {value.hex()[:16]}..., none of the {len(self.golden[index])} "
                    f"reference values of {self.source}"
                )
