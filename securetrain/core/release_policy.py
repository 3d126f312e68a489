"""Key Vault's Secure Key Release policy: parsing, evaluation against token claims, and the approved policy.

The grammar (version 1.0.0, as Azure Key Vault and Managed HSM define it)::

    {"version": "1.0.0",
     "anyOf": [                                  # one entry per trusted attestation authority
       {"authority": "https://maa.example",
        "allOf": [                               # or "anyOf"; groups nest
          {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
          {"claim": "x-ms-runtime.keys", "exists": true},
          {"anyOf": [{"claim": "...", "equals": "..."}, ...]}]}]}

Condition operators: ``equals``, ``notEquals``, ``less``, ``lessOrEquals``, ``greater``,
``greaterOrEquals`` (numbers only), ``exists`` (``true``: the claim is present; ``false``: absent). A claim
name is a dotted path into the token's claims (``x-ms-runtime.keys``).

The same code runs in two places: the Key Vault stand-in evaluates a key's policy against a validated
token before it releases anything, and Airflow checks before a run that the KEK's policy is the approved
one (:func:`policy_matches`). Parsing refuses anything it does not understand — an unknown operator, an
extra field, a missing authority — because a policy the evaluator half-understands could release a key
to the wrong TEE.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Union

from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.errors import ConfigurationError, SecurityViolation

POLICY_VERSION = "1.0.0"
#: MAA's compliance status for a genuine Azure confidential VM; the production policy demands it.
AZURE_COMPLIANT_CVM = "azure-compliant-cvm"
_ORDERING_OPERATORS = ("less", "lessOrEquals", "greater", "greaterOrEquals")
OPERATORS = ("equals", "notEquals", *_ORDERING_OPERATORS, "exists")
_GROUPS = ("allOf", "anyOf")


class ReleasePolicyInvalid(ConfigurationError):
    """The release policy does not follow the grammar; the message says where."""


class ReleaseDenied(SecurityViolation):
    """The token's claims do not satisfy the release policy; the message names the failed condition."""


@dataclass(frozen=True)
class Condition:
    """``{"claim": path, operator: value}``."""

    claim: str
    operator: str
    value: Any

    def to_document(self) -> dict[str, Any]:
        return {"claim": self.claim, self.operator: self.value}

    def failure(self, claims: Mapping[str, Any]) -> str | None:
        """None when the condition holds for ``claims``; else why not, with the value seen."""
        present, seen = _lookup(claims, self.claim)
        if self.operator == "exists":
            return None if present == self.value else (
                f"claim {self.claim} is {'present' if present else 'absent'}; the policy requires it "
                f"{'present' if self.value else 'absent'}"
            )
        if not present:
            return f"claim {self.claim} is absent; the policy requires it {self.operator} {self.value!r}"
        if self.operator == "equals":
            holds = _same(seen, self.value)
        elif self.operator == "notEquals":
            holds = not _same(seen, self.value)
        else:
            if not _is_number(seen):
                return f"claim {self.claim} is {seen!r}, not a number; the policy compares it {self.operator} {self.value!r}"
            holds = {
                "less": seen < self.value,
                "lessOrEquals": seen <= self.value,
                "greater": seen > self.value,
                "greaterOrEquals": seen >= self.value,
            }[self.operator]
        return None if holds else f"claim {self.claim} is {seen!r}; the policy requires it {self.operator} {self.value!r}"


@dataclass(frozen=True)
class Group:
    """``allOf`` (every member holds) or ``anyOf`` (at least one holds)."""

    kind: str
    members: tuple[Rule, ...]

    def to_document(self) -> dict[str, Any]:
        return {self.kind: [member.to_document() for member in self.members]}

    def failure(self, claims: Mapping[str, Any]) -> str | None:
        if self.kind == "allOf":
            for member in self.members:
                reason = member.failure(claims)
                if reason is not None:
                    return reason
            return None
        reasons = []
        for member in self.members:
            reason = member.failure(claims)
            if reason is None:
                return None
            reasons.append(reason)
        return reasons[0] if len(reasons) == 1 else "none of the alternatives holds: " + "; or ".join(reasons)


Rule = Union[Condition, Group]


@dataclass(frozen=True)
class AuthorityRule:
    """The conditions a token from one attestation authority must meet."""

    authority: str
    rule: Group

    def to_document(self) -> dict[str, Any]:
        return {"authority": self.authority, **self.rule.to_document()}


@dataclass(frozen=True)
class ReleasePolicy:
    """A parsed release policy. Build it with :meth:`parse`; serialise with :meth:`to_bytes`."""

    authorities: tuple[AuthorityRule, ...]

    @classmethod
    def parse(cls, source: bytes | str | Mapping[str, Any]) -> ReleasePolicy:
        """Parse JSON text or a decoded document; :class:`ReleasePolicyInvalid` names what is wrong."""
        document: Any = source
        if isinstance(source, (bytes, str)):
            try:
                document = json.loads(source)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ReleasePolicyInvalid(f"the release policy is not JSON: {exc}") from None
        if not isinstance(document, Mapping):
            raise ReleasePolicyInvalid("the release policy must be a JSON object")
        _exact_fields(document, {"version", "anyOf"}, "the release policy")
        if document["version"] != POLICY_VERSION:
            raise ReleasePolicyInvalid(
                f"release policy version {document['version']!r} is not supported (only {POLICY_VERSION})"
            )
        entries = document["anyOf"]
        if not isinstance(entries, list) or not entries:
            raise ReleasePolicyInvalid("the release policy's anyOf must be a non-empty list of authority rules")
        return cls(tuple(_parse_authority(entry, f"anyOf[{i}]") for i, entry in enumerate(entries)))

    def to_document(self) -> dict[str, Any]:
        return {"version": POLICY_VERSION, "anyOf": [entry.to_document() for entry in self.authorities]}

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): what the vault stores and hashes."""
        return json.dumps(self.to_document(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def rules_for(self, issuer: str) -> list[AuthorityRule]:
        """The authority rules that apply to a token issued by ``issuer`` (trailing slashes ignored)."""
        return [entry for entry in self.authorities if entry.authority.rstrip("/") == issuer.rstrip("/")]


def _exact_fields(obj: Mapping[str, Any], expected: set[str], what: str) -> None:
    missing, extra = expected - set(obj), set(obj) - expected
    if missing:
        raise ReleasePolicyInvalid(f"{what} lacks {', '.join(sorted(missing))}")
    if extra:
        raise ReleasePolicyInvalid(f"{what} has fields the grammar does not know: {', '.join(sorted(extra))}")


def _parse_authority(entry: Any, where: str) -> AuthorityRule:
    if not isinstance(entry, Mapping):
        raise ReleasePolicyInvalid(f"{where} must be an object with an authority and allOf or anyOf")
    kinds = [kind for kind in _GROUPS if kind in entry]
    if len(kinds) != 1:
        raise ReleasePolicyInvalid(f"{where} must have exactly one of allOf or anyOf")
    _exact_fields(entry, {"authority", kinds[0]}, where)
    authority = entry["authority"]
    if not isinstance(authority, str) or not authority.startswith("https://"):
        raise ReleasePolicyInvalid(f"{where}.authority must be an https URL, not {authority!r}")
    return AuthorityRule(authority.rstrip("/"), _parse_group(kinds[0], entry[kinds[0]], f"{where}.{kinds[0]}"))


def _parse_group(kind: str, members: Any, where: str) -> Group:
    if not isinstance(members, list) or not members:
        raise ReleasePolicyInvalid(f"{where} must be a non-empty list")
    return Group(kind, tuple(_parse_rule(member, f"{where}[{i}]") for i, member in enumerate(members)))


def _parse_rule(member: Any, where: str) -> Rule:
    if not isinstance(member, Mapping):
        raise ReleasePolicyInvalid(f"{where} must be an object")
    if "claim" not in member:
        kinds = [kind for kind in _GROUPS if kind in member]
        if len(kinds) != 1 or len(member) != 1:
            raise ReleasePolicyInvalid(f"{where} must be a condition (claim + operator) or one allOf/anyOf group")
        return _parse_group(kinds[0], member[kinds[0]], f"{where}.{kinds[0]}")
    operators = [key for key in member if key != "claim"]
    if len(operators) != 1 or operators[0] not in OPERATORS:
        raise ReleasePolicyInvalid(
            f"{where} must have a claim and exactly one operator of {', '.join(OPERATORS)}; it has {operators}"
        )
    claim, operator = member["claim"], operators[0]
    value = member[operator]
    if not isinstance(claim, str) or not claim or any(not part for part in claim.split(".")):
        raise ReleasePolicyInvalid(f"{where}.claim must be a dotted claim path, not {claim!r}")
    if operator == "exists" and not isinstance(value, bool):
        raise ReleasePolicyInvalid(f"{where}: exists takes true or false, not {value!r}")
    if operator in _ORDERING_OPERATORS and not _is_number(value):
        raise ReleasePolicyInvalid(f"{where}: {operator} compares numbers; {value!r} is not one")
    if operator in ("equals", "notEquals") and not isinstance(value, (str, bool, int, float)):
        raise ReleasePolicyInvalid(f"{where}: {operator} takes a string, number or boolean, not {value!r}")
    return Condition(claim, operator, value)


def _is_number(value: Any) -> bool:
    # bool is an int in Python; a policy comparing `true < 3` is a mistake, not a number comparison.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _same(seen: Any, expected: Any) -> bool:
    if isinstance(seen, bool) or isinstance(expected, bool):
        return isinstance(seen, bool) and isinstance(expected, bool) and seen == expected
    if _is_number(seen) and _is_number(expected):
        return bool(seen == expected)
    return type(seen) is type(expected) and seen == expected


def _lookup(claims: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def evaluate(policy: ReleasePolicy, claims: Mapping[str, Any]) -> None:
    """Return when ``claims`` (of a token already validated against its issuer) satisfy ``policy``.

    Raises:
        ReleaseDenied: the issuer is not an authority the policy names, or no rule for it holds; the
            message names the failed condition and the value the token carried.
    """
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise ReleaseDenied("the token names no issuer (iss)")
    rules = policy.rules_for(issuer)
    if not rules:
        known = ", ".join(entry.authority for entry in policy.authorities)
        raise ReleaseDenied(f"the token was issued by {issuer}, not by an authority the release policy trusts ({known})")
    reasons = []
    for entry in rules:
        reason = entry.rule.failure(claims)
        if reason is None:
            return
        reasons.append(reason)
    raise ReleaseDenied("release policy not satisfied: " + "; or ".join(reasons))


def _canonical(rule: Rule) -> Any:
    # Members of a group are a set as far as meaning goes: compare them in a fixed order.
    if isinstance(rule, Condition):
        return rule.to_document()
    members = sorted((_canonical(member) for member in rule.members), key=lambda doc: json.dumps(doc, sort_keys=True))
    return {rule.kind: members}


def canonical_form(policy: ReleasePolicy) -> str:
    """A text that two policies with the same meaning share, whatever their key or member order."""
    entries = sorted(
        ({"authority": entry.authority, **_canonical(entry.rule)} for entry in policy.authorities),
        key=lambda doc: json.dumps(doc, sort_keys=True),
    )
    return json.dumps({"version": POLICY_VERSION, "anyOf": entries}, sort_keys=True, separators=(",", ":"))


def policy_matches(actual: ReleasePolicy | bytes | str | Mapping[str, Any], approved: ReleasePolicy) -> bool:
    """Whether ``actual`` (e.g. the KEK's policy as Key Vault reports it) is the approved policy.

    An ``actual`` that does not parse does not match (it is never the approved policy).
    """
    if not isinstance(actual, ReleasePolicy):
        try:
            actual = ReleasePolicy.parse(actual)
        except ReleasePolicyInvalid:
            return False
    return canonical_form(actual) == canonical_form(approved)


def _one_of(claim: str, values: Collection[bytes]) -> Rule:
    conditions = tuple(Condition(claim, "equals", value.hex()) for value in sorted(values))
    return conditions[0] if len(conditions) == 1 else Group("anyOf", conditions)


def approved_release_policy(
    authority: str,
    *,
    attestation_policy: str,
    measurements: Collection[bytes],
    host_data: Collection[bytes],
    compliance_status: str = AZURE_COMPLIANT_CVM,
) -> ReleasePolicy:
    """The project's release policy for a KEK: a token from ``authority`` issued under exactly the approved
    attestation policy (its text's ``x-ms-policy-hash``, as MAA computes it), on a non-debuggable SEV-SNP VM
    running an approved launch measurement and workload (HOST_DATA), with a runtime key to wrap the KEK to.

    The measurement and HOST_DATA are pinned here as well as in the attestation policy: the vault then does not
    depend on the attestation provider's policy alone to keep the key from another workload.
    ``compliance_status`` is ``azure-compliant-cvm`` in production; the local stack passes the status its
    attestation service gives simulated platforms, which a production policy therefore refuses.
    """
    if not measurements or not host_data:
        raise ReleasePolicyInvalid("no approved launch measurement or no approved HOST_DATA: no release policy")
    conditions: list[Rule] = [
        Condition("x-ms-attestation-type", "equals", "sevsnpvm"),
        Condition("x-ms-compliance-status", "equals", compliance_status),
        Condition("x-ms-policy-hash", "equals", maa_policy_hash(attestation_policy)),
        Condition("x-ms-sevsnpvm-is-debuggable", "equals", False),
        _one_of("x-ms-sevsnpvm-launchmeasurement", measurements),
        _one_of("x-ms-sevsnpvm-hostdata", host_data),
        Condition("x-ms-runtime.keys", "exists", True),
    ]
    return ReleasePolicy((AuthorityRule(authority.rstrip("/"), Group("allOf", tuple(conditions))),))
