"""The attestation service (the MAA stand-in, :mod:`securetrain.localstack.standins.attestation_service`) as a stack service.

The first ``up`` writes the approved appraisal policy, ``<state>/policies/appraisal.yaml``: the simulated
platform's root (trusted here, and only here), the local CVM's launch measurement and HOST_DATA of the workload
installed then. The file is kept: approving a changed trainer is an explicit act (docs/local-stack.md, "After
changing trainer code").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.localstack.platform.snp_platform import DEFAULT_TCB, SimulatedSnpPlatform
from securetrain.core.appraisal import AppraisalPolicy
from securetrain.localstack.service import Service, ServiceContext, check_openid_issuer, python_service_argv
from securetrain.localstack.data_owner import stack_host_data
from securetrain.localstack.layout import write_file

def appraisal_policy_path(context: ServiceContext) -> Path:
    return context.layout.policies_dir / "appraisal.yaml"


def local_appraisal_policy(context: ServiceContext) -> AppraisalPolicy:
    """The local stack's approved policy, written on first use and read from its file afterwards."""
    path = appraisal_policy_path(context)
    if not path.exists():
        platform = SimulatedSnpPlatform.load_or_create(context.layout.snp_platform_dir)
        policy = AppraisalPolicy(
            allowed_measurements=frozenset({LAUNCH_MEASUREMENT}),
            allowed_host_data=frozenset({stack_host_data(context.layout)}),
            min_tcb=DEFAULT_TCB,
            trusted_roots=(platform.root,),
            accept_simulated_platform=True,
        )
        header = "# The local stack's approved appraisal policy (securetrain stack up wrote it).\n"
        write_file(path, (header + yaml.safe_dump(policy.to_document(), sort_keys=True)).encode(), mode=0o644)
    return AppraisalPolicy.load(path)


def _argv(context: ServiceContext) -> Sequence[str]:
    local_appraisal_policy(context)
    return python_service_argv(
        "securetrain.localstack.standins.attestation_service", context,
        "--state-dir", str(context.data_dir),
        "--policy", str(appraisal_policy_path(context)),
    )  # fmt: skip


def _health_check(context: ServiceContext) -> None:
    check_openid_issuer(context, f"{context.base_url}/.well-known/openid-configuration", context.base_url)


def _exports(context: ServiceContext) -> Mapping[str, str]:
    policy = local_appraisal_policy(context)
    return {
        "SECURETRAIN_ATTESTATION_ENDPOINT": context.base_url,
        "SECURETRAIN_ATTESTATION_LOG": str(context.data_dir / "issuance.jsonl"),
        "SECURETRAIN_APPRAISAL_POLICY": str(appraisal_policy_path(context)),
        "SECURETRAIN_APPRAISAL_POLICY_SHA256": policy.sha256,
        "SECURETRAIN_SNP_PLATFORM_DIR": str(context.layout.snp_platform_dir),
        "SECURETRAIN_CVM_LAUNCH_MEASUREMENT": LAUNCH_MEASUREMENT.hex(),
    }


ATTESTATION = Service(
    name="attestation",
    description="Azure Attestation (MAA) stand-in for SEV-SNP VMs",
    default_port=10443,
    argv=_argv,
    health_check=_health_check,
    exports=_exports,
)
