"""Key Vault's Secure Key Release policy: parsing, evaluation against token claims, comparison.

The grammar (version 1.0.0, as Azure Key Vault and Managed HSM define it)::

    {"version": "1.0.0",
     "anyOf": [                                  # one entry per trusted attestation authority (or per rule)
       {"authority": "https://maa.example",
        "allOf": [                               # or "anyOf"; groups nest
          {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
          {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
          {"anyOf": [{"claim": "...", "equals": "..."}, ...]}]}]}

Condition operators: ``equals``, ``notEquals``, ``less``, ``lessOrEquals``, ``greater``,
``greaterOrEquals`` (numbers only), ``exists`` (``true``: the claim is present; ``false``: absent). A claim
name is a dotted path into the token's JSON objects (``x-ms-isolation-tee.x-ms-attestation-type``).

How the vault compares (docs/keys.md, "How Key Vault compares claims", gives the sources):

- Microsoft's grammar page (learn.microsoft.com/azure/key-vault/keys/policy-grammar) lists every operator but
  says "the only allowed condition is equals"; a condition on an absent claim is not met; dot notation
  walks JSON objects, arrays are not supported, objects are not values.
- ``equals`` compares the *text* of scalars: Microsoft's own ACI policies (microsoft/confidential-sidecar-
  containers, ``examples/skr/aci/importkeyconfig.json`` and its ``tests/skr`` run against Key Vault) write
  ``"equals": "false"`` for the boolean claim ``x-ms-sevsnpvm-is-debuggable`` and ``"equals": "0"`` for the
  number ``x-ms-sevsnpvm-vmpl``, and the vault releases to such tokens. So here ``false`` is ``"false"`` and
  ``0`` is ``"0"``, both ways. Case is not documented: the comparison here is exact, and the approved
  policies carry values in the exact form MAA writes them (lowercase hex), so a vault comparing either way
  agrees.
- Microsoft's Secure Key Release concept page says an authority's ``allOf`` "can be replaced by anyOf,
  though you cannot nest or combine anyOf and allOf yet", while the grammar page shows nesting.

The full grammar is parsed and evaluated (the vault accepts every policy it describes, and the Key Vault
stand-in evaluates what it stores); :func:`require_documented` refuses every construct whose evaluation the
vault does not document — operators other than ``equals``, non-string values, nested groups — and the
approved policies (:mod:`securetrain.core.approved_release_policies`) pass it, so a check here never says yes
where the vault might say no.

The same code runs in two places: the Key Vault stand-in evaluates a key's policy against a validated
token before it releases anything, and Airflow checks before a run that the KEK's policy is the approved
one (:func:`policy_matches`) and that the TEE's token satisfies it. Parsing refuses anything it does not
understand — an unknown operator, an extra field, a missing authority — because a policy the evaluator
half-understands could release a key to the wrong TEE.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from securetrain.core.errors import ConfigurationError, SecurityViolation

POLICY_VERSION = "1.0.0"
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
        present, seen = claim_value(claims, self.claim)
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
            holds = _text_form(seen) is not None and not _same(seen, self.value)
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


def _text_form(value: Any) -> str | None:
    """A JSON scalar as Key Vault's ``equals`` compares it: its text (module docstring). Booleans are ``true`` and
    ``false`` as JSON writes them, integers decimal; a fraction, null, object or array has no text here and so
    never equals anything (the vault's handling of them is not documented)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


def _same(seen: Any, expected: Any) -> bool:
    seen_text, expected_text = _text_form(seen), _text_form(expected)
    return seen_text is not None and seen_text == expected_text


def claim_value(claims: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(whether ``claims`` hold the dotted ``path``, the value there)."""
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


def require_documented(policy: ReleasePolicy) -> ReleasePolicy:
    """``policy`` when every construct in it is one whose evaluation Key Vault documents: authority rules whose
    members are all ``equals`` conditions with string values (module docstring). Anything else — another
    operator, a boolean or number value, a nested group — raises :class:`ReleasePolicyInvalid` naming it: the
    vault might evaluate it otherwise than :func:`evaluate` does, so an approved policy never uses it."""
    for i, entry in enumerate(policy.authorities):
        for j, member in enumerate(entry.rule.members):
            where = f"anyOf[{i}].{entry.rule.kind}[{j}]"
            if not isinstance(member, Condition):
                raise ReleasePolicyInvalid(
                    f"{where} is a nested {member.kind} group: Key Vault's documentation says groups cannot be nested yet"
                )
            if member.operator != "equals":
                raise ReleasePolicyInvalid(
                    f"{where}: {member.operator} on {member.claim}: Key Vault documents only equals as evaluated"
                )
            if not isinstance(member.value, str):
                text = _text_form(member.value)
                hint = "" if text is None else f" (write {json.dumps(text)})"
                raise ReleasePolicyInvalid(
                    f"{where}: {member.claim} equals {json.dumps(member.value)}, not a string: Key Vault's own "
                    f"examples compare string values only{hint}"
                )
    return policy
