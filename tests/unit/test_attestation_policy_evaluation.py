"""Running attestation policies over claims: permit and deny, conditions and bindings, what gets issued, and
refusals that name the rule, the unsatisfied condition and the value the evidence had."""

from __future__ import annotations

import pytest

from securetrain.localstack.standins.attestation_service.policy_evaluation import (
    ATTESTATION_POLICY,
    Claim,
    PolicyDenied,
    evaluate,
)
from securetrain.localstack.standins.attestation_service.policy_language import AttestationPolicy

CLAIMS = (
    Claim("x-ms-attestation-type", "sevsnpvm"),
    Claim("x-ms-sevsnpvm-is-debuggable", False),
    Claim("x-ms-sevsnpvm-vmpl", 0),
    Claim("x-ms-sevsnpvm-bootloader-svn", 3),
    Claim("x-ms-sevsnpvm-hostdata", "ab" * 32),
)


def policy(authorization: str, issuance: str = "") -> AttestationPolicy:
    return AttestationPolicy.parse(
        f"version=1.0;\nauthorizationrules\n{{\n{authorization}\n}};\nissuancerules\n{{\n{issuance}\n}};\n"
    )


def test_a_permit_whose_conditions_all_hold_authorizes() -> None:
    rules = '[type=="x-ms-sevsnpvm-is-debuggable", value==false] && [type=="x-ms-sevsnpvm-bootloader-svn", value>=3] => permit();'
    assert evaluate(policy(rules), CLAIMS).issued == {}


def test_no_permit_is_a_refusal_naming_each_rule_its_unsatisfied_conditions_and_the_values_seen() -> None:
    rules = ('[type=="x-ms-sevsnpvm-hostdata", value=="cd"] && [type=="x-ms-sevsnpvm-bootloader-svn", value>=4]'
             ' && [type=="x-ms-sevsnpvm-vmpl", value==0] => permit();\n[type=="absent"] => permit();')  # fmt: skip
    with pytest.raises(PolicyDenied) as denied:
        evaluate(policy(rules), CLAIMS)
    message = str(denied.value)
    assert message.startswith("authorization denied: no rule permitted the evidence: the rule at line 4: ")
    assert f'[type=="x-ms-sevsnpvm-hostdata", value=="cd"] is not satisfied (x-ms-sevsnpvm-hostdata is "{"ab" * 32}")' in message
    assert '[type=="x-ms-sevsnpvm-bootloader-svn", value>=4] is not satisfied (x-ms-sevsnpvm-bootloader-svn is 3)' in message
    assert "vmpl" not in message  # it held
    assert 'the rule at line 5: [type=="absent"] is not satisfied (the evidence has no absent)' in message
    assert denied.value.code == "PolicyDenied"


@pytest.mark.parametrize("order", ["deny first", "deny last"])
def test_a_deny_that_fires_wins_wherever_it_stands(order: str) -> None:
    deny, permit = '[type=="x-ms-sevsnpvm-vmpl", value==0] => deny();', "=> permit();"
    rules = f"{deny}\n{permit}" if order == "deny first" else f"{permit}\n{deny}"
    with pytest.raises(PolicyDenied, match=r"denied by the rule at line \d: \[type==\"x-ms-sevsnpvm-vmpl\", value==0\] => deny\(\);"):
        evaluate(policy(rules), CLAIMS)
    assert evaluate(policy(rules.replace("value==0", "value==1")), CLAIMS).issued == {}


def test_a_policy_without_a_permit_rule_refuses_everything() -> None:
    with pytest.raises(PolicyDenied, match="has no permit"):
        evaluate(policy(""), CLAIMS)


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        ('[type=="x-ms-sevsnpvm-vmpl", value==0]', True),
        ('[type=="x-ms-sevsnpvm-vmpl", value==false]', False),  # 0 is not false
        ('[type=="x-ms-sevsnpvm-vmpl", value=="0"]', False),  # nor "0"
        ('[type=="x-ms-sevsnpvm-vmpl", value!="0"]', False),  # and != holds only within a type
        ('[type=="x-ms-sevsnpvm-is-debuggable", value!=true]', True),
        ('[type=="x-ms-sevsnpvm-is-debuggable", value>=0]', False),  # false is not an integer
        ('[type=="x-ms-sevsnpvm-bootloader-svn", value>2]', True),
        ('[type=="x-ms-sevsnpvm-bootloader-svn", value<3]', False),
        ('[type=="x-ms-sevsnpvm-bootloader-svn", value<=3]', True),
        ('[type!="x-ms-sevsnpvm-bootloader-svn", value==3]', False),
        ('[value==0]', True),  # any claim with that value
        ('[type=="x-ms-sevsnpvm-vmpl", issuer=="AttestationService"]', True),
        ('[type=="x-ms-sevsnpvm-vmpl", issuer=="AttestationPolicy"]', False),
    ],
)
def test_comparisons_hold_only_between_values_of_one_type(condition: str, holds: bool) -> None:
    rules = f"{condition} => permit();"
    if holds:
        evaluate(policy(rules), CLAIMS)
    else:
        with pytest.raises(PolicyDenied):
            evaluate(policy(rules), CLAIMS)


def test_bindings_carry_values_between_conditions_and_into_issued_claims() -> None:
    rules = 'c:[type=="x-ms-sevsnpvm-bootloader-svn"] && [type=="x-ms-sevsnpvm-vmpl", value<c.value] => permit();'
    issuance = ('c:[type=="x-ms-sevsnpvm-hostdata"] => issue(type="workload", value=c.value);\n'
                'd:[type=="x-ms-sevsnpvm-bootloader-svn"] => issue(claim=d);')  # fmt: skip
    assert evaluate(policy(rules, issuance), CLAIMS).issued == {"workload": "ab" * 32, "x-ms-sevsnpvm-bootloader-svn": 3}


def test_added_claims_are_seen_by_later_rules_but_only_issued_ones_reach_the_token() -> None:
    rules = ('c:[type=="x-ms-sevsnpvm-hostdata"] => add(type="workload", value=c.value);\n'
             f'[type=="workload", value=="{"ab" * 32}", issuer=="AttestationPolicy"] => permit();')  # fmt: skip
    issuance = '=> add(type="tier", value=2);\nc:[type=="tier", value>=2] => issue(type="level", value=c.value);'
    assert evaluate(policy(rules, issuance), CLAIMS).issued == {"level": 2}


def test_a_rule_fires_once_per_combination_and_repeated_types_become_lists() -> None:
    claims = (*CLAIMS, Claim("tag", "red"), Claim("tag", "blue"), Claim("tag", "red", ATTESTATION_POLICY))
    issuance = 'c:[type=="tag"] => issue(type="tags", value=c.value);\n=> issue(type="one", value=1);'
    assert evaluate(policy("=> permit();", issuance), claims).issued == {"tags": ["red", "blue"], "one": 1}


def test_a_rule_that_would_bind_without_bound_is_refused() -> None:
    claims = tuple(Claim(f"t{i}", i) for i in range(20))
    rules = "a:[value>=0] && b:[value>=0] && c:[value>=0] => permit();"
    with pytest.raises(PolicyDenied, match="more than 4096 combinations"):
        evaluate(policy(rules), claims)
