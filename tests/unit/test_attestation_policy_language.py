"""Azure Attestation's policy language (version 1.0): Microsoft's documented examples parse, everything the
service does not evaluate is refused with the line and column named, and no input makes the parser fail
with anything but its own error."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.localstack.standins.attestation_service.policy_language import (
    MAX_POLICY_CHARS,
    AddClaim,
    AttestationPolicy,
    ClaimValueOf,
    Deny,
    IssueBoundClaim,
    IssueClaim,
    Permit,
    PolicyInvalid,
    PropertyTest,
)

# Microsoft's examples, as the documentation prints them (learn.microsoft.com/azure/attestation/: policy-examples,
# claim-sets, policy-version-1-0, author-sign-policy, claim-rule-grammar), with the placeholders filled in.
SGX_CUSTOM = """version= 1.0;
authorizationrules
{
       [ type=="x-ms-sgx-is-debuggable", value==false ]
        && [ type=="x-ms-sgx-product-id", value==4639 ]
        && [ type=="x-ms-sgx-svn", value>= 0 ]
        && [ type=="x-ms-sgx-mrsigner", value=="2115e6c3a1b1ff4b4d43a1d4f4d4b2aa"]
    => permit();
};
issuancerules {
c:[type=="x-ms-sgx-mrsigner"] => issue(type="signer", value=c.value);
};
"""
KEY_ROTATION = """version= 1.0;
authorizationrules
{
[ type=="x-ms-sgx-is-debuggable", value==false]&&
[ type=="x-ms-sgx-mrsigner", value=="mrsigner1"] => permit();
[ type=="x-ms-sgx-is-debuggable", value==false ]&&
[ type=="x-ms-sgx-mrsigner", value=="mrsigner2"] => permit();
};
"""
TPM = """version=1.0;

authorizationrules {
    => permit();
};


issuancerules
{
[type=="aikValidated", value==true]&&
[type=="secureBootEnabled", value==true] &&
[type=="bootDebuggingDisabled", value==true] &&
[type=="notSafeMode", value==true] => issue(type="PlatformAttested", value=true);
};
"""
DRAFTING = """version=1.0;
authorizationrules
{
    [type=="secureBootEnabled", value==true, issuer=="AttestationService"]=>permit();
};

issuancerules
{
    => issue(type="SecurityLevelValue", value=100);
};
"""
DENY_ALL = """version=1.0;
authorizationrules
{
=>deny();
};

issuancerules
{
};
"""
# claim-rule-grammar's identifiers, in a policy around them.
IDENTIFIERS = """version=1.0;
authorizationrules { => permit(); };
issuancerules {
F1:[type=="OSName" , issuer=="CustomClaim"] &&
C2:[type=="OSName" , issuer=="AttestationService", value== F1.value ]
=> issue(claim = C2);
};
"""
# policy-examples' "Unsigned Policy for an SGX enclave with PolicyFormat=JWT": the JWS payload.
UNSIGNED_SGX_PAYLOAD = (
    "eyJBdHRlc3RhdGlvblBvbGljeSI6ICJkbVZ5YzJsdmJqMGdNUzR3TzJGMWRHaHZjbWw2WVhScGIyNXlkV3hsYzN0ak9sdDBlWEJsUFQwaUpHbHpMV1Js"
    "WW5WbloyRmliR1VpWFNBOVBpQndaWEp0YVhRb0tUdDlPMmx6YzNWaGJtTmxjblZzWlhON1l6cGJkSGx3WlQwOUlpUnBjeTFrWldKMVoyZGhZbXhsSWww"
    "Z1BUNGdhWE56ZFdVb2RIbHdaVDBpYVhNdFpHVmlkV2RuWVdKc1pTSXNJSFpoYkhWbFBXTXVkbUZzZFdVcE8yTTZXM1I1Y0dVOVBTSWtjMmQ0TFcxeWMy"
    "bG5ibVZ5SWwwZ1BUNGdhWE56ZFdVb2RIbHdaVDBpYzJkNExXMXljMmxuYm1WeUlpd2dkbUZzZFdVOVl5NTJZV3gxWlNrN1l6cGJkSGx3WlQwOUlpUnpa"
    "M2d0YlhKbGJtTnNZWFpsSWwwZ1BUNGdhWE56ZFdVb2RIbHdaVDBpYzJkNExXMXlaVzVqYkdGMlpTSXNJSFpoYkhWbFBXTXVkbUZzZFdVcE8yTTZXM1I1"
    "Y0dVOVBTSWtjSEp2WkhWamRDMXBaQ0pkSUQwLUlHbHpjM1ZsS0hSNWNHVTlJbkJ5YjJSMVkzUXRhV1FpTENCMllXeDFaVDFqTG5aaGJIVmxLVHRqT2x0"
    "MGVYQmxQVDBpSkhOMmJpSmRJRDAtSUdsemMzVmxLSFI1Y0dVOUluTjJiaUlzSUhaaGJIVmxQV011ZG1Gc2RXVXBPMk02VzNSNWNHVTlQU0lrZEdWbEls"
    "MGdQVDRnYVhOemRXVW9kSGx3WlQwaWRHVmxJaXdnZG1Gc2RXVTlZeTUyWVd4MVpTazdmVHMifQ"
)


def _unbase64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unsigned_sgx_policy() -> str:
    return _unbase64url(json.loads(_unbase64url(UNSIGNED_SGX_PAYLOAD))["AttestationPolicy"]).decode()


def test_the_documented_sgx_policy_parses_into_its_rules() -> None:
    policy = AttestationPolicy.parse(SGX_CUSTOM)
    (rule,) = policy.authorization_rules
    assert isinstance(rule.action, Permit) and rule.line == 4
    assert [c.claim_types() for c in rule.conditions] == [
        ("x-ms-sgx-is-debuggable",), ("x-ms-sgx-product-id",), ("x-ms-sgx-svn",), ("x-ms-sgx-mrsigner",)
    ]  # fmt: skip
    assert rule.conditions[0].tests[1] == PropertyTest("value", "==", False)
    assert rule.conditions[1].tests[1] == PropertyTest("value", "==", 4639)
    assert rule.conditions[2].tests[1] == PropertyTest("value", ">=", 0)
    (issuance,) = policy.issuance_rules
    assert issuance.action == IssueClaim("signer", ClaimValueOf("c")) and issuance.conditions[0].binding == "c"


@pytest.mark.parametrize("text", [KEY_ROTATION, TPM, DRAFTING, DENY_ALL, IDENTIFIERS], ids=["rotation", "tpm",
                         "drafting", "deny-all", "identifiers"])  # fmt: skip
def test_the_documented_examples_parse(text: str) -> None:
    policy = AttestationPolicy.parse(text)
    assert policy.text == text and policy.authorization_rules


def test_the_documented_unsigned_jws_example_carries_a_policy_that_parses() -> None:
    policy = AttestationPolicy.parse(unsigned_sgx_policy())
    assert isinstance(policy.authorization_rules[0].action, Permit)
    assert len(policy.issuance_rules) == 6 and all(isinstance(rule.action, IssueClaim) for rule in policy.issuance_rules)


def test_actions_and_references() -> None:
    policy = AttestationPolicy.parse(IDENTIFIERS)
    (rule,) = policy.issuance_rules
    assert rule.action == IssueBoundClaim("C2")
    assert rule.conditions[1].tests[2] == PropertyTest("value", "==", ClaimValueOf("F1"))
    assert isinstance(AttestationPolicy.parse(DENY_ALL).authorization_rules[0].action, Deny)
    added = AttestationPolicy.parse('version=1.0; authorizationrules { c:[type=="a"] => add(type="b", value=c.value); };')
    assert added.authorization_rules[0].action == AddClaim("b", ClaimValueOf("c"))


def test_comments_run_to_the_end_of_the_line_and_are_kept_in_the_text() -> None:
    text = 'version=1.0;\nauthorizationrules\n{\n    // who may attest\n    [type=="a", value=="// not a comment"] => permit();\n};\n'
    policy = AttestationPolicy.parse(text)
    (rule,) = policy.authorization_rules
    assert rule.line == 5 and rule.conditions[0].tests[1].operand == "// not a comment"
    assert policy.hash != AttestationPolicy.parse(text.replace("who may attest", "who attests")).hash


def test_escapes_in_strings() -> None:
    policy = AttestationPolicy.parse(r'version=1.0; authorizationrules { [type=="a\"b\\c"] => permit(); };')
    assert policy.authorization_rules[0].conditions[0].tests[0].operand == 'a"b\\c'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1, column 1: Expected Keyword 'version'"),
        ("version=1.2; authorizationrules { => permit(); };", "policy version 1.2 is not supported"),
        ("version=1.0; configurationrules { }; authorizationrules { => permit(); };", "configurationrules belong to policy version 1.1"),
        ("version=1.0; issuancerules { };", "Expected Keyword 'authorizationrules'"),
        ("version=1.0; authorizationrules { => permit() };", "column 47: Expected ';'"),
        ("version=1.0; authorizationrules { => permit(); }", "Expected ';', found the end of the policy"),
        ("version=1.0; authorizationrules { ![type==\"a\"] => permit(); };", "negated conditions"),
        ("version=1.0; authorizationrules { => permit(); }; issuancerules { => issueproperty(type=\"a\", value=1); };", "issueproperty()"),
        ("version=1.0; authorizationrules { c:[type==\"a\"] => add(type=\"b\", value=JmesPath(c.value, \"x\")); };", "functions such as JmesPath()"),
        ("version=1.0; authorizationrules { => frobnicate(); };", "frobnicate() is not an action"),
        ("version=1.0; authorizationrules { [type==\"a\", value>=\"x\"] => permit(); };", ">= compares integers"),
        ("version=1.0; authorizationrules { [type==\"a\", value<true] => permit(); };", "< compares integers"),
        ("version=1.0; authorizationrules { [type>=\"a\"] => permit(); };", "type is compared with == or != to a string"),
        ("version=1.0; authorizationrules { [issuer==1] => permit(); };", "issuer is compared with == or != to a string"),
        ("version=1.0; authorizationrules { [type==\"a\", value==c.value] => permit(); };", "c.value refers to no claim"),
        ("version=1.0; authorizationrules { [value==c.type] => permit(); };", "only the value of a bound claim"),
        ("version=1.0; authorizationrules { c:[type==\"a\"] && c:[type==\"b\"] => permit(); };", "c is bound twice"),
        ("version=1.0; authorizationrules { => issue(type=\"a\", value=1); };", "issue() is not allowed in authorizationrules"),
        ("version=1.0; authorizationrules { => permit(); }; issuancerules { => deny(); };", "deny() is not allowed in issuancerules"),
        ("version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(claim=c); };", "c is bound by no condition"),
        ("version=1.0; authorizationrules { => add(type=\"x-ms-sevsnpvm-hostdata\", value=\"00\"); };", "the service issues itself"),
        ("version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type=\"nonce\", value=\"n\"); };", "the service issues itself"),
        ("version=1.0; authorizationrules { => add(type=\"\", value=1); };", "a claim type cannot be empty"),
        ("version=1.0; authorizationrules { [type==\"a\" value==1] => permit(); };", "Expected ']'"),
        ("version=1.0; authorizationrules { [type==\"a\"] & [type==\"b\"] => permit(); };", "Expected '=>', found '&'"),
        ("version=1.0; authorizationrules { [] => permit(); };", "Expected type, value or issuer"),
        ("version=1.0; authorizationrules { [type==\"\\n\"] => permit(); };", "printable ASCII"),
        ("version=1.0; authorizationrules { [type==\"caf\u00e9\"] => permit(); };", "printable ASCII"),
        ("version=1.0; authorizationrules { [type==\"a\", value==9223372036854775808] => permit(); };", "64-bit integer"),
        ("version=1.0; authorizationrules { => permit(); }; garbage", "Expected end of text"),
        ("Version=1.0; authorizationrules { => permit(); };", "Expected Keyword 'version'"),
    ],
)
def test_what_the_service_does_not_evaluate_is_refused_naming_where(text: str, message: str) -> None:
    with pytest.raises(PolicyInvalid, match="^line ") as refused:
        AttestationPolicy.parse(text)
    assert message in str(refused.value)


def test_an_oversized_policy_is_refused_before_parsing() -> None:
    text = "version=1.0; authorizationrules { => permit(); };" + "//" + "x" * MAX_POLICY_CHARS
    with pytest.raises(PolicyInvalid, match="at most"):
        AttestationPolicy.parse(text)


def test_values_required_reads_what_every_permit_rule_pins() -> None:
    policy = AttestationPolicy.parse(KEY_ROTATION)
    assert policy.values_required("x-ms-sgx-mrsigner") == {"mrsigner1", "mrsigner2"}
    assert policy.values_required("x-ms-sgx-is-debuggable") == {False}
    assert AttestationPolicy.parse(TPM).values_required("aikValidated") is None  # `=> permit()` pins nothing
    assert AttestationPolicy.parse(DENY_ALL).values_required("anything") == frozenset()


# --- fuzzing: whatever the text, the parser answers with a policy or PolicyInvalid -----------------------

_FRAGMENTS = ["version", "=", "1.0", ";", "authorizationrules", "issuancerules", "configurationrules", "{", "}",
              "[", "]", "(", ")", "type", "value", "issuer", "==", "!=", ">=", "<", "=>", "&&", "!", ",", ":", ".",
              "permit", "deny", "add", "issue", "issueproperty", "claim", "c", "c.value", '"x"', '"', "\\", "true",
              "false", "0", "-7", "99999999999999999999", "//", "\n", " ", "JmesPath", "\u00e9", "\x00"]  # fmt: skip


def _parses_or_refuses(text: str) -> None:
    try:
        policy = AttestationPolicy.parse(text)
    except PolicyInvalid as refusal:
        assert str(refusal)
    else:
        assert policy.text == text and len(policy.hash) == 43


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_fuzzed_text_never_escapes_the_policy_error(text: str) -> None:
    _parses_or_refuses(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=60))
def test_fuzzed_token_soup_never_escapes_the_policy_error(fragments: list[str]) -> None:
    _parses_or_refuses(" ".join(fragments))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_documented_policies_never_escape_the_policy_error(data: st.DataObject) -> None:
    text = list(data.draw(st.sampled_from([SGX_CUSTOM, KEY_ROTATION, TPM, DRAFTING, IDENTIFIERS])))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text) - 1))
        text[position] = data.draw(st.sampled_from([*_FRAGMENTS, ""]))
    _parses_or_refuses("".join(text))
