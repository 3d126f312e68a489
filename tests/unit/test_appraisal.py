"""The appraisal policy: loading, canonical digest, and each rule failing with its name and the value seen."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.core.appraisal import AppraisalFailed, AppraisalPolicy, PolicyError
from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.report import GuestPolicy, TcbVersion
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.core.snp.verifier import VerifiedReport, verify_report

MILAN = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "amd-snp-milan"
MILAN_MEASUREMENT = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
MILAN_ROOT = {
    "name": "AMD ARK-Milan",
    "spki_sha256": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
}
MEASUREMENT = bytes(range(48))
HOST_DATA = bytes(range(100, 132))


def milan_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": 1,
        "allowed_measurements": [MILAN_MEASUREMENT],
        "allowed_host_data": ["00" * 32],
        "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "trusted_roots": [MILAN_ROOT],
    }
    document.update(changes)
    return document


@pytest.fixture(scope="module")
def milan() -> VerifiedReport:
    chain = CertificateChain.load(
        MILAN.joinpath("vcek.der").read_bytes(),
        MILAN.joinpath("ask.pem").read_bytes(),
        MILAN.joinpath("ark.pem").read_bytes(),
    )
    report = bytes.fromhex(MILAN.joinpath("report.hex").read_text())
    return verify_report(report, chain, AMD_ROOTS, now=datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnpPlatform:
    return SimulatedSnpPlatform.load_or_create(tmp_path_factory.mktemp("snp") / "platform")


def simulated_policy(platform: SimulatedSnpPlatform, **changes: Any) -> AppraisalPolicy:
    document: dict[str, Any] = {
        "version": 1,
        "allowed_measurements": [MEASUREMENT.hex()],
        "allowed_host_data": [HOST_DATA.hex()],
        "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "trusted_roots": [{"name": platform.root.name, "spki_sha256": platform.root.spki_sha256.hex()}],
        "accept_simulated_platform": True,
    }
    document.update(changes)
    return AppraisalPolicy.from_document(document)


def simulated(platform: SimulatedSnpPlatform, **fields: Any) -> VerifiedReport:
    evidence = platform.report(report_data=bytes(64), measurement=MEASUREMENT, host_data=HOST_DATA, **fields)
    return verify_report(evidence.report, evidence.chain, [platform.root])


def violations(policy: AppraisalPolicy, verified: VerifiedReport) -> dict[str, tuple[str, str]]:
    with pytest.raises(AppraisalFailed) as caught:
        policy.appraise(verified)
    return {v.rule: (v.seen, v.message) for v in caught.value.violations}


def test_milan_report_passes_its_policy(milan: VerifiedReport) -> None:
    policy = AppraisalPolicy.from_document(milan_document())
    appraisal = policy.appraise(milan)
    assert appraisal.policy_sha256 == policy.sha256
    assert not appraisal.simulated
    assert appraisal.to_dict()["policy_sha256"] == policy.sha256
    assert appraisal.to_dict()["report"]["measurement"] == MILAN_MEASUREMENT


def test_defaults_are_strict() -> None:
    document = milan_document()
    del document["trusted_roots"]
    policy = AppraisalPolicy.from_document(document)
    assert (policy.max_vmpl, policy.allow_debug, policy.allow_migration_agent) == (0, False, False)
    assert policy.trusted_roots == AMD_ROOTS
    assert not policy.accept_simulated_platform


def test_json_and_yaml_files_give_the_same_digest(tmp_path: Path) -> None:
    document = milan_document()
    json_file = tmp_path / "policy.json"
    json_file.write_text(json.dumps(document))
    yaml_file = tmp_path / "policy.yaml"
    reordered = dict(reversed(list(document.items())))
    reordered["allowed_measurements"] = [MILAN_MEASUREMENT.upper()]
    yaml_file.write_text(yaml.safe_dump(reordered))
    assert AppraisalPolicy.load(json_file).sha256 == AppraisalPolicy.load(yaml_file).sha256
    # Writing a default explicitly does not change the rules, nor the digest.
    explicit = AppraisalPolicy.from_document(milan_document(max_vmpl=0, allow_debug=False))
    assert explicit.sha256 == AppraisalPolicy.load(json_file).sha256
    assert AppraisalPolicy.from_document(milan_document(max_vmpl=1)).sha256 != explicit.sha256


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (milan_document(allow_root_shell=True), "Additional properties are not allowed .'allow_root_shell'"),
        ({k: v for k, v in milan_document().items() if k != "min_tcb"}, "'min_tcb' is a required property"),
        (milan_document(allowed_measurements=["7a1e"]), "allowed_measurements/0: '7a1e' does not match"),
        (milan_document(allowed_measurements=[]), "allowed_measurements: .* should be non-empty"),
        (milan_document(max_vmpl=4), "max_vmpl: 4 is greater than the maximum of 3"),
        (milan_document(version=2), "version: 1 was expected"),
        (milan_document(min_tcb={"bootloader": 3, "tee": 0, "snp": 8}), "min_tcb: 'microcode' is a required property"),
        (
            milan_document(allowed_host_data=[0]),
            "allowed_host_data/0: 0 is not of type 'string' .hex values are quoted",
        ),
        ([], "top level: .* is not of type 'object'"),
    ],
)
def test_invalid_policies_are_refused(document: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as caught:
        AppraisalPolicy.from_document(document)
    assert isinstance(caught.value, ConfigurationError)


def test_unreadable_or_misnamed_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read appraisal policy"):
        AppraisalPolicy.load(tmp_path / "missing.yaml")
    wrong = tmp_path / "policy.txt"
    wrong.write_text("{}")
    with pytest.raises(PolicyError, match=r"must be a \.json, \.yaml or \.yml file"):
        AppraisalPolicy.load(wrong)
    broken = tmp_path / "policy.yml"
    broken.write_text("version: [1\n")
    with pytest.raises(PolicyError, match="is not valid YML"):
        AppraisalPolicy.load(broken)


def test_trusting_a_simulated_root_needs_accept_simulated_platform(platform: SimulatedSnpPlatform) -> None:
    with pytest.raises(PolicyError, match="not an AMD root; set accept_simulated_platform: true"):
        simulated_policy(platform, accept_simulated_platform=False)


def test_simulated_report_passes_a_policy_that_accepts_it(platform: SimulatedSnpPlatform) -> None:
    appraisal = simulated_policy(platform).appraise(simulated(platform))
    assert appraisal.simulated
    assert appraisal.to_dict()["simulated"] is True


def test_rule_allowed_measurements(milan: VerifiedReport) -> None:
    policy = AppraisalPolicy.from_document(milan_document(allowed_measurements=["11" * 48]))
    seen, message = violations(policy, milan)["allowed_measurements"]
    assert seen == MILAN_MEASUREMENT
    assert message == f"launch measurement {MILAN_MEASUREMENT} is not in allowed_measurements"


def test_rule_allowed_host_data(milan: VerifiedReport) -> None:
    policy = AppraisalPolicy.from_document(milan_document(allowed_host_data=["22" * 32]))
    assert violations(policy, milan)["allowed_host_data"] == (
        "00" * 32,
        f"HOST_DATA {'00' * 32} is not in allowed_host_data",
    )


def test_rule_min_tcb_names_each_low_component(milan: VerifiedReport) -> None:
    policy = AppraisalPolicy.from_document(
        milan_document(min_tcb={"bootloader": 3, "tee": 1, "snp": 8, "microcode": 200})
    )
    seen, message = violations(policy, milan)["min_tcb"]
    assert seen == "tee 0, microcode 115"
    assert message == "REPORTED_TCB tee 0, microcode 115 is below min_tcb (tee 1, microcode 200)"


def test_rule_trusted_roots(milan: VerifiedReport, platform: SimulatedSnpPlatform) -> None:
    # A report verified under a root the policy does not list (here: AMD's, by a simulated-only policy).
    policy = simulated_policy(platform, allowed_measurements=[MILAN_MEASUREMENT], allowed_host_data=["00" * 32])
    seen, message = violations(policy, milan)["trusted_roots"]
    assert seen == "AMD ARK-Milan"
    assert "not in trusted_roots" in message


def test_rule_accept_simulated_platform(platform: SimulatedSnpPlatform) -> None:
    # Verified under the simulated root by some other configuration; this policy does not accept it.
    policy = AppraisalPolicy.from_document(
        milan_document(allowed_measurements=[MEASUREMENT.hex()], allowed_host_data=[HOST_DATA.hex()])
    )
    found = violations(policy, simulated(platform))
    assert found["accept_simulated_platform"][1] == (
        "report comes from a simulated SNP platform (root 'securetrain simulated ARK') "
        "and accept_simulated_platform is false"
    )
    assert "trusted_roots" in found


def test_rule_allow_debug(platform: SimulatedSnpPlatform) -> None:
    found = violations(simulated_policy(platform), simulated(platform, policy=GuestPolicy.build(debug=True)))
    assert found == {
        "allow_debug": (
            "POLICY 0xb0000",
            "guest policy 0xb0000 allows debugging (DEBUG bit 19) and allow_debug is false",
        )
    }
    simulated_policy(platform, allow_debug=True).appraise(simulated(platform, policy=GuestPolicy.build(debug=True)))


def test_rule_allow_migration_agent(platform: SimulatedSnpPlatform) -> None:
    verified = simulated(platform, policy=GuestPolicy.build(migrate_ma=True))
    seen, message = violations(simulated_policy(platform), verified)["allow_migration_agent"]
    assert seen == "POLICY 0x70000"
    assert "allows a migration agent (MIGRATE_MA bit 18)" in message
    # A bound migration agent shows in REPORT_ID_MA; the simulation never binds one, so the report is edited.
    bound = dataclasses.replace(
        simulated(platform), report=dataclasses.replace(simulated(platform).report, report_id_ma=b"\x01" * 32)
    )
    assert violations(simulated_policy(platform), bound)["allow_migration_agent"][0] == "01" * 32
    simulated_policy(platform, allow_migration_agent=True).appraise(bound)


def test_rule_max_vmpl(platform: SimulatedSnpPlatform) -> None:
    verified = simulated(platform, vmpl=2)
    assert violations(simulated_policy(platform), verified) == {"max_vmpl": ("2", "VMPL 2 is above max_vmpl 0")}
    simulated_policy(platform, max_vmpl=2).appraise(verified)


def test_low_tcb_from_the_platform(platform: SimulatedSnpPlatform) -> None:
    verified = simulated(platform, tcb=TcbVersion(bootloader=2, tee=0, snp=8, microcode=115))
    assert violations(simulated_policy(platform), verified)["min_tcb"][0] == "bootloader 2"


def test_all_broken_rules_are_reported_together(milan: VerifiedReport) -> None:
    policy = AppraisalPolicy.from_document(
        milan_document(allowed_measurements=["11" * 48], allowed_host_data=["22" * 32], max_vmpl=0)
    )
    with pytest.raises(AppraisalFailed) as caught:
        policy.appraise(milan)
    assert {v.rule for v in caught.value.violations} == {"allowed_measurements", "allowed_host_data"}
    assert "allowed_measurements; HOST_DATA" in str(caught.value)
    assert isinstance(caught.value, SecurityViolation) and caught.value.exit_code == 3
