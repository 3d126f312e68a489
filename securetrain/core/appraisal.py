"""The appraisal policy: which verified SEV-SNP reports are acceptable (the reference values).

The verifier (:mod:`securetrain.core.snp.verifier`) says whether a report is genuine; this module says
whether what it attests is what the data owner approved. They are kept apart, as Confidential
Containers' Trustee keeps its verifier apart from its reference values, so that approving a new
trainer build is an edit to a reviewed policy file, not a code change.

A policy is a JSON or YAML document (unknown keys refused)::

    version: 1
    allowed_measurements: ["7a1e5c26...841f"]   # launch MEASUREMENT, 48 bytes hex
    allowed_host_data: ["0000...0000"]          # HOST_DATA, 32 bytes hex: the workload manifest digest
    min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}
    max_vmpl: 0                                 # default 0
    allow_debug: false                          # default false
    allow_migration_agent: false                # default false
    trusted_roots:                              # default: AMD's ARK-Milan and ARK-Genoa
      - {name: AMD ARK-Milan, spki_sha256: "9f056bee...9cb9"}
    accept_simulated_platform: false            # default false

:attr:`AppraisalPolicy.sha256` is the SHA-256 of the policy's canonical form (RFC 8785 JSON of every
field, defaults filled in, hex lowercase, lists sorted), so the same rules written as JSON or YAML,
in any order, have the same digest; tokens carry it so a relying party knows which rules were applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import rfc8785
import yaml

from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.snp.report import TcbVersion
from securetrain.core.snp.roots import AMD_ROOTS, TrustedRoot
from securetrain.core.snp.verifier import VerifiedReport

logger = logging.getLogger(__name__)

POLICY_VERSION = 1


def _hex_list(size: int) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {"type": "string", "pattern": f"^[0-9a-fA-F]{{{2 * size}}}$"},
    }


_SVN = {"type": "integer", "minimum": 0, "maximum": 255}

POLICY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "allowed_measurements", "allowed_host_data", "min_tcb"],
    "properties": {
        "version": {"const": POLICY_VERSION},
        "allowed_measurements": _hex_list(48),
        "allowed_host_data": _hex_list(32),
        "min_tcb": {
            "type": "object",
            "additionalProperties": False,
            "required": list(TcbVersion.COMPONENTS),
            "properties": {name: _SVN for name in TcbVersion.COMPONENTS},
        },
        "max_vmpl": {"type": "integer", "minimum": 0, "maximum": 3},
        "allow_debug": {"type": "boolean"},
        "allow_migration_agent": {"type": "boolean"},
        "trusted_roots": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "spki_sha256"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "spki_sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                },
            },
        },
        "accept_simulated_platform": {"type": "boolean"},
    },
}


class PolicyError(ConfigurationError):
    """An appraisal policy file is missing, malformed or contradicts itself; the message says where."""


@dataclass(frozen=True)
class RuleViolation:
    """One policy rule a report broke: the rule's name, the value seen and a sentence saying both."""

    rule: str
    seen: str
    message: str


class AppraisalFailed(SecurityViolation):
    """A verified report broke one or more rules of the appraisal policy."""

    def __init__(self, violations: list[RuleViolation]) -> None:
        super().__init__("; ".join(v.message for v in violations))
        self.violations = tuple(violations)


@dataclass(frozen=True)
class Appraisal:
    """A report that passed every rule, with the digest of the policy that judged it."""

    verified: VerifiedReport
    policy_sha256: str

    @property
    def simulated(self) -> bool:
        """Whether the report comes from a simulated platform (tokens must say so)."""
        return self.verified.simulated

    def to_dict(self) -> dict[str, Any]:
        """The verified report, its root, and the policy digest, JSON-ready."""
        return {**self.verified.to_dict(), "policy_sha256": self.policy_sha256}


@dataclass(frozen=True)
class AppraisalPolicy:
    """Reference values a verified report must match; build with :meth:`load` or :meth:`from_document`."""

    allowed_measurements: frozenset[bytes]
    allowed_host_data: frozenset[bytes]
    min_tcb: TcbVersion
    max_vmpl: int = 0
    allow_debug: bool = False
    allow_migration_agent: bool = False
    trusted_roots: tuple[TrustedRoot, ...] = AMD_ROOTS
    accept_simulated_platform: bool = False
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        simulated = [root.name for root in self.trusted_roots if root.simulated]
        if simulated and not self.accept_simulated_platform:
            raise PolicyError(
                f"trusted_roots lists {', '.join(simulated)}, which is not an AMD root; "
                "set accept_simulated_platform: true to trust a simulated platform, or remove it"
            )
        digest = hashlib.sha256(rfc8785.dumps(self.to_document())).hexdigest()
        object.__setattr__(self, "sha256", digest)

    @classmethod
    def load(cls, path: Path) -> AppraisalPolicy:
        """Read a policy from a ``.json``, ``.yaml`` or ``.yml`` file."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read appraisal policy {path}: {exc}") from None
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                document = json.loads(text)
            elif suffix in (".yaml", ".yml"):
                document = yaml.safe_load(text)
            else:
                raise PolicyError(f"appraisal policy {path} must be a .json, .yaml or .yml file")
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise PolicyError(f"appraisal policy {path} is not valid {suffix[1:].upper()}: {exc}") from None
        policy = cls.from_document(document, source=str(path))
        logger.info("appraisal policy %s loaded (sha256 %s)", path, policy.sha256)
        return policy

    @classmethod
    def from_document(cls, document: Any, *, source: str = "appraisal policy") -> AppraisalPolicy:
        """Build a policy from its parsed JSON/YAML document, validated against :data:`POLICY_SCHEMA`."""
        errors = sorted(
            jsonschema.Draft202012Validator(POLICY_SCHEMA).iter_errors(document), key=lambda e: list(e.absolute_path)
        )
        if errors:
            details = "; ".join(_schema_error_text(error) for error in errors)
            raise PolicyError(f"{source} is invalid: {details}")
        roots = document.get("trusted_roots")
        return cls(
            allowed_measurements=frozenset(bytes.fromhex(v) for v in document["allowed_measurements"]),
            allowed_host_data=frozenset(bytes.fromhex(v) for v in document["allowed_host_data"]),
            min_tcb=TcbVersion(**document["min_tcb"]),
            max_vmpl=document.get("max_vmpl", 0),
            allow_debug=document.get("allow_debug", False),
            allow_migration_agent=document.get("allow_migration_agent", False),
            trusted_roots=(
                AMD_ROOTS
                if roots is None
                else tuple(TrustedRoot(r["name"], bytes.fromhex(r["spki_sha256"])) for r in roots)
            ),
            accept_simulated_platform=document.get("accept_simulated_platform", False),
        )

    def to_document(self) -> dict[str, Any]:
        """The canonical document: every field explicit, hex lowercase, lists sorted."""
        return {
            "version": POLICY_VERSION,
            "allowed_measurements": sorted(v.hex() for v in self.allowed_measurements),
            "allowed_host_data": sorted(v.hex() for v in self.allowed_host_data),
            "min_tcb": self.min_tcb.to_dict(),
            "max_vmpl": self.max_vmpl,
            "allow_debug": self.allow_debug,
            "allow_migration_agent": self.allow_migration_agent,
            "trusted_roots": sorted(
                ({"name": r.name, "spki_sha256": r.spki_sha256.hex()} for r in self.trusted_roots),
                key=lambda r: (r["spki_sha256"], r["name"]),
            ),
            "accept_simulated_platform": self.accept_simulated_platform,
        }

    def appraise(self, verified: VerifiedReport) -> Appraisal:
        """Check every rule against ``verified``; raise :class:`AppraisalFailed` listing each broken rule."""
        violations = list(self._violations(verified))
        if violations:
            raise AppraisalFailed(violations)
        logger.info("SEV-SNP report passed appraisal policy %s", self.sha256)
        return Appraisal(verified, self.sha256)

    def _violations(self, verified: VerifiedReport) -> list[RuleViolation]:
        report = verified.report
        root = verified.root
        found: list[RuleViolation] = []

        def fail(rule: str, seen: str, message: str) -> None:
            found.append(RuleViolation(rule, seen, message))

        if root.spki_sha256 not in {trusted.spki_sha256 for trusted in self.trusted_roots}:
            fail(
                "trusted_roots",
                root.name,
                f"report was verified under root {root.name!r}, which is not in trusted_roots",
            )
        if root.simulated and not self.accept_simulated_platform:
            fail(
                "accept_simulated_platform",
                root.name,
                f"report comes from a simulated SNP platform (root {root.name!r}) "
                "and accept_simulated_platform is false",
            )
        if report.measurement not in self.allowed_measurements:
            fail(
                "allowed_measurements",
                report.measurement.hex(),
                f"launch measurement {report.measurement.hex()} is not in allowed_measurements",
            )
        if report.host_data not in self.allowed_host_data:
            fail(
                "allowed_host_data",
                report.host_data.hex(),
                f"HOST_DATA {report.host_data.hex()} is not in allowed_host_data",
            )
        if report.policy.debug and not self.allow_debug:
            fail(
                "allow_debug",
                f"POLICY 0x{report.policy.value:x}",
                f"guest policy 0x{report.policy.value:x} allows debugging (DEBUG bit 19) and allow_debug is false",
            )
        if not self.allow_migration_agent:
            if report.policy.migrate_ma:
                fail(
                    "allow_migration_agent",
                    f"POLICY 0x{report.policy.value:x}",
                    f"guest policy 0x{report.policy.value:x} allows a migration agent (MIGRATE_MA bit 18) "
                    "and allow_migration_agent is false",
                )
            if report.migration_agent_bound:
                fail(
                    "allow_migration_agent",
                    report.report_id_ma.hex(),
                    f"a migration agent is bound (REPORT_ID_MA {report.report_id_ma.hex()}) "
                    "and allow_migration_agent is false",
                )
        if report.vmpl > self.max_vmpl:
            fail("max_vmpl", str(report.vmpl), f"VMPL {report.vmpl} is above max_vmpl {self.max_vmpl}")
        below = report.reported_tcb.components_below(self.min_tcb)
        if below:
            seen = ", ".join(f"{name} {getattr(report.reported_tcb, name)}" for name in below)
            wanted = ", ".join(f"{name} {getattr(self.min_tcb, name)}" for name in below)
            fail("min_tcb", seen, f"REPORTED_TCB {seen} is below min_tcb ({wanted})")
        return found


def _schema_error_text(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(part) for part in error.absolute_path) or "top level"
    hint = ""
    if error.validator == "pattern" or (error.validator == "type" and error.validator_value == "string"):
        hint = " (hex values are quoted strings: YAML reads unquoted digits as a number)"
    return f"{where}: {error.message}{hint}"
