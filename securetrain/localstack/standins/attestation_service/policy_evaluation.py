"""Running an attestation policy over the claims verified evidence yields: permit or deny, and the claims it issues.

What the documentation defines ("Claim and claim rules", "Attestation policy version 1.0"), and how this
service reads it where the documentation leaves a choice:

- A **claim** has a type, a value (string, integer or boolean) and an issuer: ``AttestationService`` for the
  incoming claims the service derives from evidence, ``AttestationPolicy`` for claims a rule adds or issues.
- A **condition** ``[tests]`` holds when at least one claim in the current claim set passes every test; a
  labelled condition ``c:[...]`` binds each such claim in turn, so the rule's later conditions and its action
  can use ``c.value``. A rule fires once for every combination of bound claims that satisfies all its
  conditions (once, when it binds nothing); a rule without conditions always fires.
- Values of different types are never equal, and never unequal either: ``!=`` and the orderings hold only
  between values of one type (integers, for the orderings). ``true`` is not ``1``.
- **Authorization rules** run in order; ``add()`` makes a claim the later rules see. The evidence is
  authorized when some ``permit()`` rule fired and no ``deny()`` rule did: a deny wins wherever it stands,
  and no permit is a refusal. Fail-closed either way; the refusal names the rule that denied, or each permit
  rule with the conditions no claim satisfied and the values the evidence had.
- **Issuance rules** run in order after authorization; ``add()`` and ``issue()`` make claims the later rules
  see, and ``issue()``'s go into the token. A type issued more than once with different values is a list in
  the token, in the order issued.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from securetrain.core.errors import SecurityViolation
from securetrain.localstack.standins.attestation_service.policy_language import (
    AddClaim,
    AttestationPolicy,
    ClaimCondition,
    ClaimRule,
    ClaimValueOf,
    Deny,
    IssueBoundClaim,
    IssueClaim,
    Literal,
    Operand,
    Permit,
    PropertyTest,
)

#: The issuer of the claims the service derives from evidence (a condition may ask ``issuer=="..."``).
ATTESTATION_SERVICE = "AttestationService"
#: The issuer of the claims rules add or issue.
ATTESTATION_POLICY = "AttestationPolicy"
#: A bound on the combinations one rule may bind, so that no policy makes one request run unbounded.
MAX_BINDINGS = 4096


@dataclass(frozen=True)
class Claim:
    """One claim: what the policy language reasons about."""

    type: str
    value: Literal
    issuer: str = ATTESTATION_SERVICE


class PolicyDenied(SecurityViolation):
    """The attestation policy did not authorize the evidence; the message names the rule and the values seen."""

    code = "PolicyDenied"


@dataclass(frozen=True)
class Evaluation:
    """An authorized evaluation: the claims the issuance rules put into the token."""

    issued: Mapping[str, Any]


Bindings = dict[str, Claim]


def _kind(value: Literal) -> type:
    return bool if isinstance(value, bool) else type(value)


def _holds(seen: Literal, operator: str, expected: Literal) -> bool:
    if _kind(seen) is not _kind(expected):
        return False
    if operator == "==":
        return seen == expected
    if operator == "!=":
        return seen != expected
    if _kind(seen) is not int:
        return False
    return {"<": seen < expected, "<=": seen <= expected, ">": seen > expected, ">=": seen >= expected}[operator]  # type: ignore[operator]


def _resolve(operand: Operand, bound: Bindings) -> Literal:
    return bound[operand.binding].value if isinstance(operand, ClaimValueOf) else operand


def _passes(test: PropertyTest, claim: Claim, bound: Bindings) -> bool:
    seen = {"type": claim.type, "value": claim.value, "issuer": claim.issuer}[test.property]
    return _holds(seen, test.operator, _resolve(test.operand, bound))


def _combinations(rule: ClaimRule, claims: Sequence[Claim]) -> tuple[list[Bindings], list[ClaimCondition]]:
    """Every way ``rule``'s conditions hold over ``claims``, and the conditions no claim satisfied.

    A condition that fails is recorded and passed over, so that one refusal names every failing condition
    that can be judged on its own; conditions referring to a failed condition's claim cannot be, and are not.
    """
    combinations: list[Bindings] = [{}]
    failed: list[ClaimCondition] = []
    unbound: set[str] = set()
    for condition in rule.conditions:
        if unbound & set(condition.references()):
            if condition.binding is not None:
                unbound.add(condition.binding)
            continue
        extended: list[Bindings] = []
        for bound in combinations:
            matching = [claim for claim in claims if all(_passes(test, claim, bound) for test in condition.tests)]
            if condition.binding is None:
                extended.extend([bound] if matching else [])
            else:
                extended.extend({**bound, condition.binding: claim} for claim in matching)
            if len(extended) > MAX_BINDINGS:
                raise PolicyDenied(
                    f"authorization denied: the rule at line {rule.line} binds more than {MAX_BINDINGS} combinations of claims"
                )
        if extended:
            combinations = extended
        else:
            failed.append(condition)
            if condition.binding is not None:
                unbound.add(condition.binding)
    return ([] if failed else combinations), failed


def _shown(value: Literal) -> str:
    return json.dumps(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unsatisfied(condition: ClaimCondition, claims: Sequence[Claim]) -> str:
    seen = []
    for claim_type in condition.claim_types():
        values = [_shown(claim.value) for claim in claims if claim.type == claim_type]
        seen.append(f"{claim_type} is {' and '.join(values)}" if values else f"the evidence has no {claim_type}")
    return f"{_one_line(condition.text)} is not satisfied" + (f" ({'; '.join(seen)})" if seen else "")


def _issued(rule: ClaimRule, bound: Bindings) -> Iterator[tuple[Claim, bool]]:
    """The claims ``rule``'s action makes for one combination, each with whether it goes into the token."""
    action = rule.action
    if isinstance(action, AddClaim):
        yield Claim(action.type, _resolve(action.value, bound), ATTESTATION_POLICY), False
    elif isinstance(action, IssueClaim):
        yield Claim(action.type, _resolve(action.value, bound), ATTESTATION_POLICY), True
    elif isinstance(action, IssueBoundClaim):
        claim = bound[action.binding]
        yield Claim(claim.type, claim.value, ATTESTATION_POLICY), True


def evaluate(policy: AttestationPolicy, incoming: Sequence[Claim]) -> Evaluation:
    """Run ``policy`` over the ``incoming`` claims; :class:`PolicyDenied` unless its authorization rules permit."""
    claims = list(incoming)
    permitted = False
    not_permitting: list[str] = []
    for rule in policy.authorization_rules:
        combinations, failed = _combinations(rule, claims)
        if not combinations:
            if isinstance(rule.action, Permit):
                reasons = "; ".join(_unsatisfied(condition, claims) for condition in failed)
                not_permitting.append(f"the rule at line {rule.line}: {reasons}")
            continue
        if isinstance(rule.action, Deny):
            raise PolicyDenied(f"authorization denied by the rule at line {rule.line}: {_one_line(rule.text)}")
        if isinstance(rule.action, Permit):
            permitted = True
        for bound in combinations:
            claims.extend(claim for claim, _ in _issued(rule, bound))
    if not permitted:
        if not not_permitting:
            raise PolicyDenied("authorization denied: the policy has no permit() rule")
        raise PolicyDenied("authorization denied: no rule permitted the evidence: " + "; ".join(not_permitting))
    issued: dict[str, list[Literal]] = {}
    for rule in policy.issuance_rules:
        combinations, _ = _combinations(rule, claims)
        for bound in combinations:
            for claim, to_token in _issued(rule, bound):
                claims.append(claim)
                values = issued.setdefault(claim.type, []) if to_token else []
                if to_token and not any(_kind(v) is _kind(claim.value) and v == claim.value for v in values):
                    values.append(claim.value)
    return Evaluation({name: values[0] if len(values) == 1 else values for name, values in issued.items()})
