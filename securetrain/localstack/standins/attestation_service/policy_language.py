"""Azure Attestation's policy language, version 1.0: the text an attestation policy is written in, parsed.

The grammar is the one Microsoft documents ("Attestation policy version 1.0", "Claim and claim rules",
"How to author an attestation policy", https://learn.microsoft.com/azure/attestation/)::

    version=1.0;
    authorizationrules
    {
        [type=="x-ms-sevsnpvm-is-debuggable", value==false]
            && [type=="x-ms-sevsnpvm-bootloader-svn", value>=3] => permit();
        c:[type=="x-ms-sevsnpvm-vmpl", value!=0] => deny();
    };
    issuancerules
    {
        c:[type=="x-ms-sevsnpvm-hostdata"] => issue(type="workload", value=c.value);
    };

A policy is ``version=1.0;``, an ``authorizationrules`` section and an optional ``issuancerules`` section,
each ``{ rule; ... };``. A rule is ``conditions => action;`` where the conditions (none, or several joined by
``&&``) each filter the claim set: ``[property op operand, ...]`` with property ``type``, ``value`` or
``issuer``; ``==`` and ``!=`` for every value type, ``<``, ``<=``, ``>``, ``>=`` for integers; operands are
double-quoted strings (printable ASCII; ``\\"`` and ``\\\\`` the only escapes), integers, ``true``/``false``,
or ``ident.value`` — the value of the claim an earlier condition of the same rule bound with ``ident:[...]``.
Actions: ``permit()`` and ``deny()`` (authorization rules only), ``add(type="...", value=...)`` (both),
``issue(type="...", value=...)`` and ``issue(claim=ident)`` (issuance rules only). ``//`` starts a comment
that runs to the end of the line, as in Microsoft's sample policies.

Anything else is refused with :class:`PolicyInvalid` naming the line and column: the constructs of later
policy versions (``configurationrules``, ``issueproperty``, negated conditions ``![...]``, functions such as
``JmesPath(...)``), an operator a value type does not have, a reference to a claim no earlier condition
bound, an action in the wrong section. A policy the evaluator would half-understand must not be accepted,
because what it permits would not be what its author wrote. So is a rule that adds or issues a claim under
a name the service issues itself (``x-ms-...``, ``nonce``, the JWT's registered claims): the token's claims
about the evidence are the service's, never the policy's.

pyparsing builds the parser; :func:`AttestationPolicy.parse` is the only way in and raises only
:class:`PolicyInvalid`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Union

import pyparsing as pp

from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.errors import ConfigurationError

SUPPORTED_VERSION = "1.0"
#: Far above any policy a person writes, and a bound on what one upload makes the service parse.
MAX_POLICY_CHARS = 64 * 1024
_INT64 = 2**63
#: Claim names the service issues itself: a rule may test them, never add or issue them.
_REGISTERED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "nonce", "cnf"})
_SERVICE_PREFIXES = ("x-ms-", "x-securetrain-")


class PolicyInvalid(ConfigurationError):
    """The text is not an attestation policy this service evaluates; the message says where and why."""


@dataclass(frozen=True)
class ClaimValueOf:
    """``ident.value``: the value of the claim the condition labelled ``ident`` matched."""

    binding: str

    def __str__(self) -> str:
        return f"{self.binding}.value"


Literal = Union[str, int, bool]
Operand = Union[Literal, ClaimValueOf]


@dataclass(frozen=True)
class PropertyTest:
    """``property op operand`` inside a condition, e.g. ``value>=8``."""

    property: str  # "type", "value" or "issuer"
    operator: str  # "==", "!=", "<", "<=", ">", ">="
    operand: Operand


@dataclass(frozen=True)
class ClaimCondition:
    """``[tests]``, optionally labelled ``ident:``: satisfied when some claim passes every test."""

    binding: str | None
    tests: tuple[PropertyTest, ...]
    line: int
    text: str  # as written, for messages

    def claim_types(self) -> tuple[str, ...]:
        """The claim types the condition asks for with ``type==``."""
        return tuple(t.operand for t in self.tests if t.property == "type" and t.operator == "==" and isinstance(t.operand, str))

    def references(self) -> tuple[str, ...]:
        return tuple(t.operand.binding for t in self.tests if isinstance(t.operand, ClaimValueOf))


@dataclass(frozen=True)
class Permit:
    """``permit()``: the evidence may proceed to the issuance rules."""


@dataclass(frozen=True)
class Deny:
    """``deny()``: the evidence earns no token, whatever else permits it."""


@dataclass(frozen=True)
class AddClaim:
    """``add(type=..., value=...)``: a claim later rules see, never in the token."""

    type: str
    value: Operand


@dataclass(frozen=True)
class IssueClaim:
    """``issue(type=..., value=...)``: a claim later rules see and the token carries."""

    type: str
    value: Operand


@dataclass(frozen=True)
class IssueBoundClaim:
    """``issue(claim=ident)``: the claim a condition matched, issued as it is."""

    binding: str


Action = Union[Permit, Deny, AddClaim, IssueClaim, IssueBoundClaim]


@dataclass(frozen=True)
class ClaimRule:
    """``conditions => action;``"""

    conditions: tuple[ClaimCondition, ...]
    action: Action
    line: int
    text: str


@dataclass(frozen=True)
class AttestationPolicy:
    """A parsed version 1.0 attestation policy and the text it was parsed from."""

    text: str
    authorization_rules: tuple[ClaimRule, ...]
    issuance_rules: tuple[ClaimRule, ...]

    @classmethod
    def parse(cls, text: str) -> AttestationPolicy:
        """Parse ``text``; :class:`PolicyInvalid` (and nothing else) if it is not a policy this service evaluates."""
        if len(text) > MAX_POLICY_CHARS:
            raise PolicyInvalid(f"the policy is {len(text)} characters long; at most {MAX_POLICY_CHARS} are accepted")
        try:
            with _PARSER_LOCK:
                parsed = _POLICY.parse_string(text, parse_all=True)
        except pp.ParseBaseException as exc:
            raise PolicyInvalid(_describe(exc)) from None
        authorization, issuance = parsed[0], parsed[1] if len(parsed) > 1 else ()
        policy = cls(text, tuple(authorization), tuple(issuance))
        for rule in policy.authorization_rules:
            _check_rule(rule, "authorizationrules", (Permit, Deny, AddClaim))
        for rule in policy.issuance_rules:
            _check_rule(rule, "issuancerules", (AddClaim, IssueClaim, IssueBoundClaim))
        return policy

    @property
    def hash(self) -> str:
        """``x-ms-policy-hash`` of tokens issued under this policy."""
        return maa_policy_hash(self.text)

    def values_required(self, claim_type: str) -> frozenset[Literal] | None:
        """The values a ``claim_type`` claim must have for a ``permit()`` rule to fire: the union over permit
        rules of what each requires with ``[type=="T", value==V]`` conditions; None when some permit rule fires
        whatever that claim's value (the policy does not pin it)."""
        required: set[Literal] = set()
        for rule in self.authorization_rules:
            if not isinstance(rule.action, Permit):
                continue
            pinned: set[Literal] | None = None
            for condition in rule.conditions:
                values = _pinned_values(condition, claim_type)
                if values is not None:
                    pinned = values if pinned is None else pinned & values
            if pinned is None:
                return None
            required |= pinned
        return frozenset(required)


def _pinned_values(condition: ClaimCondition, claim_type: str) -> set[Literal] | None:
    if claim_type not in condition.claim_types() or condition.references():
        return None
    equal = [t.operand for t in condition.tests if t.property == "value" and t.operator == "=="]
    return {value for value in equal if not isinstance(value, ClaimValueOf)} or None


def _reserved(claim_type: str) -> bool:
    return claim_type in _REGISTERED_CLAIMS or claim_type.startswith(_SERVICE_PREFIXES)


def _check_rule(rule: ClaimRule, section: str, allowed: tuple[type, ...]) -> None:
    where = f"line {rule.line}"
    if not isinstance(rule.action, allowed):
        verb = _ACTION_NAMES[type(rule.action)]
        raise PolicyInvalid(f"{where}: {verb}() is not allowed in {section}")
    bound: list[str] = []
    for condition in rule.conditions:
        for reference in condition.references():
            if reference not in bound:
                raise PolicyInvalid(
                    f"line {condition.line}: {reference}.value refers to no claim an earlier condition of the rule bound"
                )
        if condition.binding is not None:
            if condition.binding in bound:
                raise PolicyInvalid(f"line {condition.line}: {condition.binding} is bound twice in one rule")
            bound.append(condition.binding)
    action = rule.action
    references = [action.binding] if isinstance(action, IssueBoundClaim) else []
    if isinstance(action, (AddClaim, IssueClaim)):
        if isinstance(action.value, ClaimValueOf):
            references.append(action.value.binding)
        if _reserved(action.type):
            raise PolicyInvalid(
                f"{where}: {_ACTION_NAMES[type(action)]}(type={action.type!r}) names a claim the service issues itself; "
                "a policy may test it, not set it"
            )
        if not action.type:
            raise PolicyInvalid(f"{where}: a claim type cannot be empty")
    for reference in references:
        if reference not in bound:
            raise PolicyInvalid(f"{where}: {reference} is bound by no condition of the rule")


_ACTION_NAMES = {Permit: "permit", Deny: "deny", AddClaim: "add", IssueClaim: "issue", IssueBoundClaim: "issue"}


def _describe(exc: pp.ParseBaseException) -> str:
    where = f"line {exc.lineno}, column {exc.col}"
    if not exc.msg.startswith("Expected"):
        return f"{where}: {exc.msg}"  # one of the refusals above, which say what they found
    found = exc.found if exc.loc < len(exc.pstr) else "the end of the policy"
    return f"{where}: {exc.msg}, found {found}"


# --- the grammar ----------------------------------------------------------------------------------------


_BLANK = re.compile(r"(?:\s+|//[^\n]*)*")


def _first_token(text: str, location: int) -> int:
    """Where the construct that begins at ``location`` really starts: after white space and comments."""
    match = _BLANK.match(text, location)
    return match.end() if match else location


def _fatal(message: str) -> pp.ParseAction:
    def refuse(text: str, location: int, tokens: pp.ParseResults) -> None:
        raise pp.ParseFatalException(text, location, message.format(*tokens))

    return refuse


def _build_grammar() -> pp.ParserElement:
    LBRACE, RBRACE, LBRACK, RBRACK, LPAR, RPAR, SEMI, COMMA, COLON, ASSIGN, DOT = map(pp.Suppress, "{}[]();,:=.")
    ARROW, AND = pp.Suppress("=>"), pp.Suppress("&&")
    keywords = ("version", "authorizationrules", "issuancerules", "configurationrules", "type", "value", "issuer",
                "claim", "permit", "deny", "add", "issue", "issueproperty", "true", "false")  # fmt: skip
    kw = {word: pp.Keyword(word) for word in keywords}
    identifier = (~pp.MatchFirst(kw.values()) + pp.Regex(r"[A-Za-z_][A-Za-z0-9_]*")).set_name("an identifier")

    string = pp.Regex(r'"((?:[ !#-\[\]-~]|\\["\\])*)"').set_name("a string")
    string.set_parse_action(lambda tokens: re.sub(r"\\(.)", r"\1", tokens[0][1:-1]))
    bad_string = pp.Regex(r'"[^"\n]*"?').set_parse_action(
        _fatal("a string holds printable ASCII between double quotes, with \\\" and \\\\ its only escapes")
    )
    integer = pp.Regex(r"-?[0-9]+").set_name("an integer")

    def to_integer(text: str, location: int, tokens: pp.ParseResults) -> int:
        value = int(tokens[0])
        if not -_INT64 <= value < _INT64:
            raise pp.ParseFatalException(text, location, f"{tokens[0]} is out of the range of a 64-bit integer")
        return value

    integer.set_parse_action(to_integer)
    boolean = (kw["true"] | kw["false"]).set_parse_action(lambda tokens: tokens[0] == "true")
    reference = (identifier + DOT - (kw["value"] | pp.Regex(r"[A-Za-z_]\w*").set_parse_action(
        _fatal("only the value of a bound claim can be referred to ({0} is not supported)")
    ))).set_parse_action(lambda tokens: ClaimValueOf(tokens[0]))  # fmt: skip
    function = (pp.Regex(r"[A-Za-z_]\w*") + pp.FollowedBy("(")).set_parse_action(
        _fatal("functions such as {0}() belong to later policy versions; this service evaluates version 1.0")
    )
    literal = (string | bad_string | integer | boolean).set_name("a value")
    operand = (literal | function | reference).set_name("a value or a bound claim's value")

    operator = pp.Regex(r"==|!=|<=|>=|<|>").set_name("a comparison operator")
    claim_property = (kw["type"] | kw["value"] | kw["issuer"]).set_name("type, value or issuer")

    def to_test(text: str, location: int, tokens: pp.ParseResults) -> PropertyTest:
        test = PropertyTest(tokens[0], tokens[1], tokens[2])
        if test.property in ("type", "issuer"):
            if test.operator not in ("==", "!=") or not isinstance(test.operand, str):
                raise pp.ParseFatalException(
                    text, location, f"{test.property} is compared with == or != to a string"
                )
        elif test.operator not in ("==", "!=") and isinstance(test.operand, (str, bool)):
            raise pp.ParseFatalException(text, location, f"{test.operator} compares integers; {test.operand!r} is not one")
        return test

    property_test = (claim_property - operator - operand).set_parse_action(to_test)

    def to_condition(text: str, location: int, tokens: pp.ParseResults) -> ClaimCondition:
        _, inner, end = tokens
        start = _first_token(text, location)
        binding = inner[0] if isinstance(inner[0], str) else None
        tests = tuple(item for item in inner if isinstance(item, PropertyTest))
        return ClaimCondition(binding, tests, pp.lineno(start, text), text[start:end])

    negated = (pp.Literal("!") + pp.FollowedBy("[")).set_parse_action(
        _fatal("negated conditions (![...]) belong to later policy versions; this service evaluates version 1.0")
    )
    condition = negated | pp.Located(
        pp.Opt(identifier + COLON) + LBRACK - pp.DelimitedList(property_test) - RBRACK
    ).set_parse_action(to_condition).set_name("a condition [...]")
    conditions = condition + pp.ZeroOrMore(AND - condition)

    value_argument = kw["value"].suppress() - ASSIGN - operand
    type_argument = kw["type"].suppress() - ASSIGN - (string | bad_string)
    permit = (kw["permit"] - LPAR - RPAR).set_parse_action(lambda: Permit())
    deny = (kw["deny"] - LPAR - RPAR).set_parse_action(lambda: Deny())
    add = (kw["add"].suppress() - LPAR - type_argument - COMMA - value_argument - RPAR).set_parse_action(
        lambda tokens: AddClaim(tokens[0], tokens[1])
    )
    issue_claim = (kw["claim"].suppress() - ASSIGN - identifier).set_parse_action(lambda tokens: IssueBoundClaim(tokens[0]))
    issue_value = (type_argument - COMMA - value_argument).set_parse_action(lambda tokens: IssueClaim(tokens[0], tokens[1]))
    issue = kw["issue"].suppress() - LPAR - (issue_claim | issue_value) - RPAR
    issue_property = kw["issueproperty"].set_parse_action(
        _fatal("issueproperty() sets property claims, which this service does not support")
    )
    unknown_action = (pp.Regex(r"[A-Za-z_]\w*") + pp.FollowedBy("(")).set_parse_action(
        _fatal("{0}() is not an action of policy version 1.0 (permit, deny, add, issue)")
    )
    action = (permit | deny | add | issue | issue_property | unknown_action).set_name("an action")

    def to_rule(text: str, location: int, tokens: pp.ParseResults) -> ClaimRule:
        _, inner, end = tokens
        start = _first_token(text, location)
        return ClaimRule(tuple(inner[:-1]), inner[-1], pp.lineno(start, text), text[start:end])

    # Once a rule's first condition is read, the rest of it must follow: errors then point inside the rule.
    rule = pp.Located((conditions - ARROW | ARROW) - action - SEMI).set_parse_action(to_rule).set_name("a rule")

    def section(name: str) -> pp.ParserElement:
        return pp.Group(kw[name].suppress() - LBRACE - pp.ZeroOrMore(rule) - RBRACE - SEMI)

    version_number = pp.Regex(r"[0-9]+\.[0-9]+").set_name("a version number")

    def check_version(text: str, location: int, tokens: pp.ParseResults) -> None:
        if tokens[0] != SUPPORTED_VERSION:
            raise pp.ParseFatalException(
                text, location, f"policy version {tokens[0]} is not supported; this service evaluates version {SUPPORTED_VERSION}"
            )

    version = pp.Suppress(kw["version"] - ASSIGN - version_number.set_parse_action(check_version) - SEMI)
    configuration = kw["configurationrules"].set_parse_action(
        _fatal("configurationrules belong to policy version 1.1 and later; this service evaluates version 1.0")
    )
    policy = version - pp.Opt(configuration) + section("authorizationrules") - pp.Opt(section("issuancerules")) - pp.StringEnd()
    policy.ignore(pp.dbl_slash_comment)
    return policy


_POLICY = _build_grammar()
# pyparsing keeps per-parser state while it parses; policies are parsed rarely (an upload, a start), one at a time.
_PARSER_LOCK = threading.Lock()

