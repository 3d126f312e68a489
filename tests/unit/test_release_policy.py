"""The release policy grammar: parsing refuses what it does not understand; evaluation names what failed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.release_policy import (
    ReleaseDenied,
    ReleasePolicy,
    ReleasePolicyInvalid,
    approved_release_policy,
    evaluate,
    policy_matches,
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


def test_booleans_are_not_numbers_or_strings():
    with pytest.raises(ReleaseDenied, match="is-debuggable is True"):
        evaluate(policy({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False}), claims(**{"x-ms-sevsnpvm-is-debuggable": True}))
    with pytest.raises(ReleaseDenied):
        evaluate(policy({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": 0}), claims())
    with pytest.raises(ReleaseDenied):
        evaluate(policy({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}), claims())
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


ATTESTATION_POLICY = 'version=1.0;\nauthorizationrules\n{\n    [type=="x-ms-sevsnpvm-is-debuggable", value==false] => permit();\n};\n'


def test_approved_policy_accepts_the_approved_tee_only():
    approved = approved_release_policy(AUTHORITY, attestation_policy=ATTESTATION_POLICY,
                                       measurements={b"\x11" * 48}, host_data={b"\x22" * 32})  # fmt: skip
    good = claims(**{"x-ms-compliance-status": "azure-compliant-cvm", "x-ms-policy-hash": maa_policy_hash(ATTESTATION_POLICY),
                     "x-ms-sevsnpvm-launchmeasurement": "11" * 48, "x-ms-sevsnpvm-hostdata": "22" * 32})  # fmt: skip
    evaluate(approved, good)
    assert policy_matches(approved.to_bytes(), ReleasePolicy.parse(approved.to_bytes()))
    for claim, value in [("x-ms-sevsnpvm-hostdata", "00" * 32), ("x-ms-sevsnpvm-is-debuggable", True),
                         ("x-ms-compliance-status", "securetrain-simulated-cvm"), ("x-ms-attestation-type", "sgx"),
                         ("x-ms-policy-hash", maa_policy_hash(ATTESTATION_POLICY + " "))]:  # fmt: skip
        with pytest.raises(ReleaseDenied, match=claim):
            evaluate(approved, {**good, claim: value})


def test_the_approved_policy_pins_maas_hash_of_the_attestation_policy_text():
    approved = approved_release_policy(AUTHORITY, attestation_policy=ATTESTATION_POLICY,
                                       measurements={b"\x11" * 48}, host_data={b"\x22" * 32})  # fmt: skip
    (pinned,) = [c for c in approved.authorities[0].rule.members if getattr(c, "claim", None) == "x-ms-policy-hash"]
    assert pinned.value == maa_policy_hash(ATTESTATION_POLICY) and len(pinned.value) == 43  # base64url, not hex
    with pytest.raises(ReleasePolicyInvalid, match="no approved launch measurement"):
        approved_release_policy(AUTHORITY, attestation_policy=ATTESTATION_POLICY, measurements=(), host_data={b"\x22" * 32})


@given(st.integers(-10, 10), st.integers(-10, 10))
def test_ordering_operators_agree_with_python(seen, bound):
    for operator, holds in [("less", seen < bound), ("greaterOrEquals", seen >= bound)]:
        rules = policy({"claim": "v", operator: bound})
        if holds:
            evaluate(rules, {"iss": AUTHORITY, "v": seen})
        else:
            with pytest.raises(ReleaseDenied):
                evaluate(rules, {"iss": AUTHORITY, "v": seen})
