"""The approved release policy of each platform: it accepts that platform's genuine claims with the approved
reference values, and refuses them after any single pinned claim changes or goes missing."""

from __future__ import annotations

import base64
import copy
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from securetrain.core.aci.evidence import load_aci_evidence
from securetrain.core.aci.verifier import verify_aci_evidence
from securetrain.core.approved_release_policies import (
    AciReferenceValues,
    AzureCvmReferenceValues,
    SnpReferenceValues,
    approved_release_policy,
    reference_values_from_json,
)
from securetrain.core.attestation.claims import (
    AZURE_COMPLIANT_CVM,
    AZURE_COMPLIANT_UVM,
    SIMULATED_CVM,
    SIMULATED_UVM,
)
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.azure_cvm.verifier import verify_cvm_evidence
from securetrain.core.azure_cvm.workload import WORKLOAD_PCR, workload_pcr_value
from securetrain.core.release_policy import (
    Condition,
    ReleaseDenied,
    ReleasePolicy,
    ReleasePolicyInvalid,
    evaluate,
    policy_matches,
    require_documented,
)
from securetrain.core.snp.roots import AMD_ROOTS
from tests.aci_evidence import CCE_POLICY
from tests.aci_evidence import DOCUMENT as ACI_DOCUMENT
from tests.aci_evidence import NOW as ACI_NOW

AUTHORITY = "https://maa.example"
ATTESTATION_POLICY = 'version=1.0;\nauthorizationrules\n{\n    [type=="x-ms-sevsnpvm-is-debuggable", value==false] => permit();\n};\n'
CVM_DOCUMENT = json.loads((Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm" / "evidence.json").read_text())
CVM_NONCE = base64.b64decode(CVM_DOCUMENT["report"]["snpCvm"]["nonce"])
CVM_NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def issued(claims: dict[str, Any]) -> dict[str, Any]:
    """``claims`` as the attestation service issues them: its issuer and its attestation policy's hash added."""
    return {**claims, "iss": AUTHORITY, "x-ms-policy-hash": maa_policy_hash(ATTESTATION_POLICY)}


@pytest.fixture(scope="module")
def cvm_claims() -> dict[str, Any]:
    verified = verify_cvm_evidence(CvmEvidence.from_document(CVM_DOCUMENT), nonce=CVM_NONCE, trusted_roots=AMD_ROOTS, now=CVM_NOW)
    return issued(verified.claims())


@pytest.fixture(scope="module")
def aci_claims() -> dict[str, Any]:
    evidence = load_aci_evidence(ACI_DOCUMENT)
    return issued(verify_aci_evidence(evidence, cce_policy=CCE_POLICY, trusted_roots=AMD_ROOTS, now=ACI_NOW).claims())


def snp_claims(measurement: str = "11" * 48, host_data: str = "22" * 32) -> dict[str, Any]:
    return issued({"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": AZURE_COMPLIANT_CVM,
                   "x-ms-sevsnpvm-is-debuggable": False, "x-ms-sevsnpvm-launchmeasurement": measurement,
                   "x-ms-sevsnpvm-hostdata": host_data, "x-ms-runtime": {"keys": [{"kid": "k"}]}})  # fmt: skip


def cvm_reference(cvm_claims: dict[str, Any], **changes: Any) -> AzureCvmReferenceValues:
    # The genuine VM's PCR 13 is zero: nothing measured a workload into it.
    quoted = base64.b64decode(cvm_claims["x-ms-azurevm-attested-pcr-values"][f"pcr{WORKLOAD_PCR}"])
    values = {"attestation_authority": AUTHORITY, "attestation_policy": ATTESTATION_POLICY,
              "workload_pcr_values": frozenset({quoted.hex()}), **changes}  # fmt: skip
    return AzureCvmReferenceValues(**values)


def aci_reference(**changes: Any) -> AciReferenceValues:
    values = {"attestation_authority": AUTHORITY, "attestation_policy": ATTESTATION_POLICY,
              "cce_policy_sha256": frozenset({"73973b78d70cc68353426de188db5dfc57e5b766e399935fb73a61127ea26d20"}), **changes}  # fmt: skip
    return AciReferenceValues(**values)


def snp_reference(**changes: Any) -> SnpReferenceValues:
    values = {"attestation_authority": AUTHORITY, "attestation_policy": ATTESTATION_POLICY,
              "launch_measurements": frozenset({"11" * 48}), "host_data": frozenset({"22" * 32}), **changes}  # fmt: skip
    return SnpReferenceValues(**values)


def with_claim(claims: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``claims`` with the claim at dotted ``path`` set to ``value``, or removed when ``value`` is ``...``."""
    changed = copy.deepcopy(claims)
    *parents, name = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    if value is ...:
        del node[name]
    else:
        node[name] = value
    return changed


def conditions(policy: ReleasePolicy) -> list[Condition]:
    [rule] = policy.authorities
    return list(rule.rule.members)


def other_value(value: str) -> Any:
    """Another value of the claim's kind: ``true`` for ``"false"``, one digit changed otherwise."""
    return {"false": True, "0": 1}.get(value, value[:-1] + ("0" if value[-1] != "0" else "1"))


def assert_accepts_only_these_claims(policy: ReleasePolicy, claims: dict[str, Any]) -> None:
    evaluate(policy, claims)
    for condition in conditions(policy):
        for changed in (other_value(condition.value), ...):
            with pytest.raises(ReleaseDenied, match=condition.claim.replace(".", r"\.")):
                evaluate(policy, with_claim(claims, condition.claim, changed))


def test_azure_cvm_policy_accepts_the_genuine_vm_and_refuses_each_claim_changed(cvm_claims) -> None:
    policy = approved_release_policy(cvm_reference(cvm_claims))
    assert {condition.claim: condition.value for condition in conditions(policy)} == {
        "x-ms-attestation-type": "azurevm",
        "x-ms-isolation-tee.x-ms-attestation-type": "sevsnpvm",
        "x-ms-isolation-tee.x-ms-compliance-status": AZURE_COMPLIANT_CVM,
        "x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable": "false",
        "x-ms-azurevm-attested-pcr-values.pcr13": base64.b64encode(bytes(32)).decode(),
        "x-ms-policy-hash": maa_policy_hash(ATTESTATION_POLICY),
    }
    assert_accepts_only_these_claims(policy, cvm_claims)
    # The SEV-SNP claims are the isolation TEE's: at the top level they would not be the hardware's.
    assert "x-ms-sevsnpvm-is-debuggable" not in cvm_claims


def test_azure_cvm_policy_pins_the_workload_measured_into_its_pcr(cvm_claims) -> None:
    measurement = bytes(range(32))
    policy = approved_release_policy(cvm_reference(cvm_claims, workload_pcr_values=frozenset({workload_pcr_value(measurement).hex()})))
    with pytest.raises(ReleaseDenied, match="x-ms-azurevm-attested-pcr-values.pcr13 is 'AAAA"):
        evaluate(policy, cvm_claims)  # the genuine VM measured no workload
    measured = with_claim(cvm_claims, "x-ms-azurevm-attested-pcr-values.pcr13",
                          base64.b64encode(workload_pcr_value(measurement)).decode())  # fmt: skip
    evaluate(policy, measured)


def test_azure_aci_policy_accepts_the_genuine_container_group_and_refuses_each_claim_changed(aci_claims) -> None:
    policy = approved_release_policy(aci_reference())
    assert {condition.claim: condition.value for condition in conditions(policy)} == {
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": AZURE_COMPLIANT_UVM,
        "x-ms-sevsnpvm-is-debuggable": "false",
        "x-ms-sevsnpvm-vmpl": "0",
        "x-ms-sevsnpvm-hostdata": "73973b78d70cc68353426de188db5dfc57e5b766e399935fb73a61127ea26d20",
        "x-ms-policy-hash": maa_policy_hash(ATTESTATION_POLICY),
    }
    assert_accepts_only_these_claims(policy, aci_claims)


def test_snp_policy_accepts_the_approved_tee_and_refuses_each_claim_changed() -> None:
    policy = approved_release_policy(snp_reference())
    assert [condition.claim for condition in conditions(policy)] == [
        "x-ms-attestation-type", "x-ms-compliance-status", "x-ms-policy-hash", "x-ms-sevsnpvm-is-debuggable",
        "x-ms-sevsnpvm-launchmeasurement", "x-ms-sevsnpvm-hostdata",
    ]  # fmt: skip
    assert_accepts_only_these_claims(policy, snp_claims())
    with pytest.raises(ReleaseDenied, match="x-ms-policy-hash"):
        evaluate(policy, {**snp_claims(), "x-ms-policy-hash": maa_policy_hash(ATTESTATION_POLICY + " ")})


def test_several_approved_values_are_several_rules_never_a_nested_group() -> None:
    policy = approved_release_policy(snp_reference(launch_measurements=frozenset({"11" * 48, "33" * 48}),
                                                   host_data=frozenset({"22" * 32, "44" * 32})))  # fmt: skip
    assert len(policy.authorities) == 4 and require_documented(policy) is policy
    for measurement in ("11" * 48, "33" * 48):
        for host_data in ("22" * 32, "44" * 32):
            evaluate(policy, snp_claims(measurement, host_data))
    with pytest.raises(ReleaseDenied, match="none|x-ms-sevsnpvm-launchmeasurement"):
        evaluate(policy, snp_claims("55" * 48, "22" * 32))


@pytest.mark.parametrize("platform", ["azure-cvm", "azure-aci", "snp"])
def test_a_simulated_platform_never_has_maa_s_compliance_status(platform, cvm_claims, aci_claims) -> None:
    reference, claims, status_claim, genuine, simulated = {
        "azure-cvm": (lambda **c: cvm_reference(cvm_claims, **c), cvm_claims,
                      "x-ms-isolation-tee.x-ms-compliance-status", AZURE_COMPLIANT_CVM, SIMULATED_CVM),
        "azure-aci": (aci_reference, aci_claims, "x-ms-compliance-status", AZURE_COMPLIANT_UVM, SIMULATED_UVM),
        "snp": (snp_reference, snp_claims(), "x-ms-compliance-status", AZURE_COMPLIANT_CVM, SIMULATED_CVM),
    }[platform]  # fmt: skip
    production, local = approved_release_policy(reference()), approved_release_policy(reference(simulated=True))
    evaluate(production, claims)
    with pytest.raises(ReleaseDenied, match=status_claim):
        evaluate(local, claims)
    from_simulation = with_claim(claims, status_claim, simulated)
    evaluate(local, from_simulation)
    with pytest.raises(ReleaseDenied, match=f"{status_claim} is '{simulated}'.*{genuine}"):
        evaluate(production, from_simulation)


@pytest.mark.parametrize("platform", ["azure-cvm", "azure-aci", "snp"])
def test_the_reference_values_file_makes_the_same_policy_on_both_sides(platform, cvm_claims) -> None:
    reference = {"azure-cvm": lambda: cvm_reference(cvm_claims), "azure-aci": aci_reference, "snp": snp_reference}[platform]()
    document = json.loads(reference.model_dump_json())
    assert document["platform"] == platform
    read_back = reference_values_from_json(json.dumps(document))
    assert read_back == reference
    assert approved_release_policy(read_back).to_bytes() == approved_release_policy(reference).to_bytes()
    assert policy_matches(approved_release_policy(read_back).to_bytes(), approved_release_policy(reference))


@pytest.mark.parametrize(
    "change,complaint",
    [
        ({"platform": "sgx"}, "platform"),
        ({"cce_policy_sha256": ["73973B78D70CC68353426DE188DB5DFC57E5B766E399935FB73A61127EA26D20"]}, "pattern"),
        ({"cce_policy_sha256": ["ab" * 31]}, "pattern"),
        ({"cce_policy_sha256": []}, "at least 1"),
        ({"attestation_authority": "http://maa.example"}, "pattern"),
        ({"attestation_policy": ""}, "at least 1"),
        ({"simulated": "false"}, "boolean"),
        ({"launch_measurements": ["11" * 48]}, "Extra inputs"),
    ],
)  # fmt: skip
def test_reference_values_that_are_not_exactly_typed_are_refused(change, complaint) -> None:
    document = {**json.loads(aci_reference().model_dump_json()), **change}
    with pytest.raises(ReleasePolicyInvalid, match=f"(?s)the approved reference values are not valid: .*{complaint}"):
        reference_values_from_json(json.dumps(document))


@given(st.text() | st.binary())
def test_any_text_is_reference_values_or_refused(text) -> None:
    try:
        reference_values_from_json(text)
    except ReleasePolicyInvalid:
        pass


def test_the_workload_pcr_range_is_the_tpm_s() -> None:
    with pytest.raises(ValidationError):
        AzureCvmReferenceValues(attestation_authority=AUTHORITY, attestation_policy="p",
                                workload_pcr_values=frozenset({"00" * 32}), workload_pcr=24)  # fmt: skip


CONTRACT = "ab" * 32


def test_a_contract_bound_policy_requires_the_contract_claim_in_every_rule(cvm_claims) -> None:
    snp = approved_release_policy(snp_reference(), contract_digest=CONTRACT)
    assert Condition("x-ms-runtime.contract", "equals", CONTRACT) in conditions(snp)
    claims = with_claim(snp_claims(), "x-ms-runtime.contract", CONTRACT)
    assert_accepts_only_these_claims(snp, claims)
    with pytest.raises(ReleaseDenied, match=r"x-ms-runtime\.contract"):
        evaluate(snp, snp_claims())  # a TEE that enforces no contract

    cvm = approved_release_policy(cvm_reference(cvm_claims), contract_digest=CONTRACT)
    cvm_token = with_claim({**cvm_claims, "x-ms-runtime": {"client-payload": {}}}, "x-ms-runtime.client-payload.contract", CONTRACT)
    assert_accepts_only_these_claims(cvm, cvm_token)
    several = approved_release_policy(snp_reference(host_data=frozenset({"22" * 32, "33" * 32})), contract_digest=CONTRACT)
    assert all(Condition("x-ms-runtime.contract", "equals", CONTRACT) in rule.rule.members for rule in several.authorities)


@pytest.mark.parametrize("digest", ["AB" * 32, "ab" * 31, "", "zz" * 32])
def test_a_contract_digest_that_is_not_lowercase_sha256_hex_is_refused(digest) -> None:
    with pytest.raises(ValidationError):
        approved_release_policy(snp_reference(), contract_digest=digest)
