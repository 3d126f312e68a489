"""The release policy grammar: parsing refuses what it does not understand; evaluation names what failed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securetrain.core.release_policy import (
    ReleaseDenied,
    ReleasePolicy,
    ReleasePolicyInvalid,
    evaluate,
    policy_matches,
    require_documented,
)

AUTHORITY = "https://maa.example"


def policy(*conditions, kind: str = "allOf", authority: str = AUTHORITY) -> ReleasePolicy:
    return ReleasePolicy.parse({"version": "1.0.0", "anyOf": [{"authority": authority, kind: list(conditions)}]})


def claims(**extra) -> dict:
    return {"iss": AUTHORITY, "x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-is-debuggable": False,
            "x-ms-sevsnpvm-guestsvn": 3, "x-ms-runtime": {"keys": [{"kid": "k"}], "client": {"n": 1}}, **extra}  # fmt: skip


@pytest.mark.parametrize(
    "operator,value,holds",
    [
        ("equals", 3, True), ("equals", 4, False), ("notEquals", 4, True), ("notEquals", 3, False),
        ("less", 4, True), ("less", 3, False), ("lessOrEquals", 3, True), ("lessOrEquals", 2, False),
        ("greater", 2, True), ("greater", 3, False), ("greaterOrEquals", 3, True), ("greaterOrEquals", 4, False),
    ],
)  # fmt: skip
def test_operators(operator, value, holds):
    rules = policy({"claim": "x-ms-sevsnpvm-guestsvn", operator: value})
    if holds:
        evaluate(rules, claims())
    else:
        with pytest.raises(ReleaseDenied, match=f"x-ms-sevsnpvm-guestsvn is 3; the policy requires it {operator} {value}"):
            evaluate(rules, claims())


def test_exists_and_dotted_paths():
    evaluate(policy({"claim": "x-ms-runtime.keys", "exists": True}, {"claim": "x-ms-runtime.client.n", "equals": 1}), claims())
    with pytest.raises(ReleaseDenied, match="x-ms-runtime.keys is absent"):
        evaluate(policy({"claim": "x-ms-runtime.keys", "exists": True}), claims(**{"x-ms-runtime": {}}))
    with pytest.raises(ReleaseDenied, match="x-ms-sevsnpvm-is-debuggable is present; the policy requires it absent"):
        evaluate(policy({"claim": "x-ms-sevsnpvm-is-debuggable", "exists": False}), claims())


@pytest.mark.parametrize(
    "claim,value,holds",
    [
        # Microsoft's own ACI policies write booleans and numbers as strings, and Key Vault releases under them.
        ("x-ms-sevsnpvm-is-debuggable", "false", True), ("x-ms-sevsnpvm-is-debuggable", False, True),
        ("x-ms-sevsnpvm-guestsvn", "3", True), ("x-ms-sevsnpvm-guestsvn", 3, True),
        ("x-ms-sevsnpvm-is-debuggable", "true", False), ("x-ms-sevsnpvm-is-debuggable", True, False),
        # Text, not truthiness: false is not 0, "0" or "" ...
        ("x-ms-sevsnpvm-is-debuggable", 0, False), ("x-ms-sevsnpvm-is-debuggable", "0", False),
        ("x-ms-sevsnpvm-is-debuggable", "", False),
        # ... case is not documented, so the comparison is exact ...
        ("x-ms-sevsnpvm-is-debuggable", "False", False), ("x-ms-attestation-type", "SEVSNPVM", False),
        # ... and numbers are decimal integers: a fraction or another spelling has no agreed text.
        ("x-ms-sevsnpvm-guestsvn", 3.0, False), ("x-ms-sevsnpvm-guestsvn", "3.0", False),
        ("x-ms-sevsnpvm-guestsvn", "03", False),
    ],
)  # fmt: skip
def test_equals_compares_the_text_of_scalars_as_key_vault_does(claim, value, holds):
    rules = policy({"claim": claim, "equals": value})
    if holds:
        evaluate(rules, claims())
    else:
        with pytest.raises(ReleaseDenied, match=claim):
            evaluate(rules, claims())


def test_objects_and_arrays_equal_nothing_and_order_needs_numbers():
    for value in ("", "[]", "{}"):
        with pytest.raises(ReleaseDenied, match="x-ms-runtime"):
            evaluate(policy({"claim": "x-ms-runtime", "equals": value}), claims())
    with pytest.raises(ReleaseDenied, match="x-ms-runtime.keys"):
        evaluate(policy({"claim": "x-ms-runtime.keys", "notEquals": "x"}), claims())
    evaluate(policy({"claim": "x-ms-sevsnpvm-is-debuggable", "notEquals": "true"}), claims())
    with pytest.raises(ReleaseDenied, match="is-debuggable is False; the policy requires it notEquals 'false'"):
        evaluate(policy({"claim": "x-ms-sevsnpvm-is-debuggable", "notEquals": "false"}), claims())
    with pytest.raises(ReleaseDenied, match="not a number"):
        evaluate(policy({"claim": "x-ms-attestation-type", "greater": 1}), claims())


def test_nested_any_and_all():
    nested = policy(
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
        {"anyOf": [{"claim": "x-ms-sevsnpvm-guestsvn", "equals": 1}, {"allOf": [{"claim": "x-ms-sevsnpvm-guestsvn", "greater": 2}]}]},
    )  # fmt: skip
    evaluate(nested, claims())
    with pytest.raises(ReleaseDenied, match="none of the alternatives holds.*equals 1.*or.*greater 2"):
        evaluate(nested, claims(**{"x-ms-sevsnpvm-guestsvn": 0}))


def test_issuer_must_be_a_named_authority():
    with pytest.raises(ReleaseDenied, match="issued by https://other.example, not by an authority"):
        evaluate(policy({"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}), claims(iss="https://other.example"))
    with pytest.raises(ReleaseDenied, match="no issuer"):
        evaluate(policy({"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}), {"x-ms-attestation-type": "sevsnpvm"})


@pytest.mark.parametrize(
    "document,complaint",
    [
        ("not json", "not JSON"),
        ({"version": "2.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "equals": 1}]}]}, "version"),
        ({"version": "1.0.0", "anyOf": []}, "non-empty"),
        ({"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "a", "equals": 1}]}]}, "authority"),
        ({"version": "1.0.0", "anyOf": [{"authority": "http://x", "allOf": [{"claim": "a", "equals": 1}]}]}, "https"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "matches": 1}]}]}, "operator"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "equals": 1, "less": 2}]}]}, "exactly one operator"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "less": "x"}]}]}, "compares numbers"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "exists": 1}]}]}, "true or false"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a..b", "equals": 1}]}]}, "dotted"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": []}]}, "non-empty"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "equals": 1}]}], "x": 1}, "do not know|does not know"),
        ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "equals": [1]}]}]}, "string, number"),
    ],
)  # fmt: skip
def test_malformed_policies_are_refused(document, complaint):
    with pytest.raises(ReleasePolicyInvalid, match=complaint):
        ReleasePolicy.parse(document if isinstance(document, str) else json.dumps(document))


def test_policy_matches_ignores_order_but_not_meaning():
    a = policy({"claim": "a", "equals": 1}, {"claim": "b", "equals": 2})
    b = policy({"claim": "b", "equals": 2}, {"claim": "a", "equals": 1})
    assert policy_matches(b.to_bytes(), a)
    assert not policy_matches(policy({"claim": "a", "equals": 1}).to_bytes(), a)
    assert not policy_matches(policy({"claim": "a", "equals": 1}, {"claim": "b", "equals": 2}, kind="anyOf"), a)
    assert not policy_matches(b"garbage", a)


@pytest.mark.parametrize(
    "member,complaint",
    [
        ({"claim": "x-ms-runtime.keys", "exists": True}, "exists on x-ms-runtime.keys: Key Vault documents only equals"),
        ({"claim": "x-ms-sevsnpvm-guestsvn", "greaterOrEquals": 2}, "greaterOrEquals"),
        ({"claim": "x-ms-attestation-type", "notEquals": "sgx"}, "notEquals"),
        ({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False}, 'equals false, not a string.*write "false"'),
        ({"claim": "x-ms-sevsnpvm-vmpl", "equals": 0}, 'not a string.*write "0"'),
        ({"claim": "x-ms-sevsnpvm-guestsvn", "equals": 1.5}, "not a string"),
        ({"anyOf": [{"claim": "a", "equals": "1"}, {"claim": "a", "equals": "2"}]}, r"anyOf\[0\].allOf\[1\] is a nested anyOf"),
    ],
)  # fmt: skip
def test_constructs_whose_evaluation_the_vault_does_not_document_are_refused(member, complaint):
    undocumented = policy({"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}, member)
    with pytest.raises(ReleasePolicyInvalid, match=complaint):
        require_documented(undocumented)


def test_equals_on_strings_in_authority_rules_is_documented():
    documented = ReleasePolicy.parse({"version": "1.0.0", "anyOf": [
        {"authority": AUTHORITY, "allOf": [{"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"}]},
        {"authority": AUTHORITY, "anyOf": [{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]},
    ]})  # fmt: skip
    assert require_documented(documented) is documented


@given(st.integers(-10, 10), st.integers(-10, 10))
def test_ordering_operators_agree_with_python(seen, bound):
    for operator, holds in [("less", seen < bound), ("greaterOrEquals", seen >= bound)]:
        rules = policy({"claim": "v", operator: bound})
        if holds:
            evaluate(rules, {"iss": AUTHORITY, "v": seen})
        else:
            with pytest.raises(ReleaseDenied):
                evaluate(rules, {"iss": AUTHORITY, "v": seen})
