"""Attestation latency per platform: p50/p95 of 100 attestations beside an HTTPS round trip to the same service.

A local stack on the emulated Azure CVM runs in a temporary state directory on free ports. Each platform's TEE
side is what a job does, in the same run against the same attestation service:

- ``snp`` (the raw-SNP baseline): a report on the simulated platform binding the runtime data, ``POST
  /attest/SevSnpVm``, the token validated;
- ``azure-cvm``: the TEE's own :class:`~securetrain.tee.attest.Attester` with the production Azure CVM provider
  through the emulated paravisor: user data written to the vTPM, the HCL report read, the AK's quote over PCRs
  0-23, the PCRs, the event log, THIM's VCEK chain from IMDS, ``POST /attest/AzureGuest``, the token validated.
  One job key for every attestation, as a job's renewals do: a new key's first attestation also waits for the
  paravisor to renew its report (at most every 2 s, as Azure's does).

The baseline is ``GET /certs`` on the same service and connection: what TLS and HTTP alone cost.

Usage: ``python -m benchmarks.attestation_latency [--requests 100]``
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

import requests

from benchmarks.stack import running_stack
from securetrain.core.attestation.maa import AttestationServiceClient, report_data_for, runtime_data_bytes
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator
from securetrain.localstack.emulated_platform import EmulatedPlatform
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.registry import services_for
from securetrain.localstack.services.attestation import approved_reference_values
from securetrain.tee.attest import Attester, TeeKey
from securetrain.tee.evidence.azure_cvm import AzureCvmProvider


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    platform = EmulatedPlatform.AZURE_CVM
    with running_stack(services_for(platform), platform) as (_, env):
        endpoint, ca = env["SECURETRAIN_ATTESTATION_ENDPOINT"], env["SECURETRAIN_CA_BUNDLE"]
        _, (host_data,) = approved_reference_values(Path(env["SECURETRAIN_ATTESTATION_POLICY"]).read_text())
        snp_platform = SimulatedSnpPlatform.load_or_create(Path(env["SECURETRAIN_SNP_PLATFORM_DIR"]))
        measurement = bytes.fromhex(env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"])
        client = AttestationServiceClient(endpoint, verify=ca)
        validator = TokenValidator(AuthorityKeys(endpoint, verify=ca))
        provider = AzureCvmProvider(env["SECURETRAIN_VTPM_TCTI"], env["SECURETRAIN_IMDS_ENDPOINT"],
                                    event_log=Path(env["SECURETRAIN_EVENT_LOG"]), ca_bundle=Path(ca))  # fmt: skip
        cvm_attester, key = Attester(provider, client, validator), TeeKey()
        cvm_attester.attest(key, secrets.token_urlsafe(32))  # the paravisor's first report for this key
        session = requests.Session()

        baseline, snp, cvm = [], [], []
        for _ in range(args.requests):
            start = time.perf_counter()
            session.get(f"{endpoint}/certs", verify=ca, timeout=10).raise_for_status()
            baseline.append(time.perf_counter() - start)
        for _ in range(args.requests):
            nonce = secrets.token_hex(16)
            runtime = runtime_data_bytes({"keys": [], "nonce": nonce})
            start = time.perf_counter()
            evidence = snp_platform.report(
                report_data=report_data_for(runtime), measurement=measurement, host_data=host_data)
            token = client.attest_sev_snp_vm(evidence.report, evidence.vcek_chain_pem, runtime, nonce)
            validator.validate(token, expected_nonce=nonce)
            snp.append(time.perf_counter() - start)
            start = time.perf_counter()
            cvm_attester.attest(key, secrets.token_urlsafe(32))
            cvm.append(time.perf_counter() - start)
    snp_p50, snp_p95 = percentiles(snp)
    cvm_p50, cvm_p95 = percentiles(cvm)
    base_p50, base_p95 = percentiles(baseline)
    print(f"snp attest (report + POST /attest/SevSnpVm + token validation):      p50 {snp_p50:.1f} ms, p95 {snp_p95:.1f} ms")
    print(f"azure-cvm attest (vTPM user data, HCL report, quote, IMDS + AzureGuest): p50 {cvm_p50:.1f} ms, p95 {cvm_p95:.1f} ms")
    print(f"baseline (GET /certs, same service):                                 p50 {base_p50:.1f} ms, p95 {base_p95:.1f} ms")
    print(f"ratio p50 snp/baseline {snp_p50 / base_p50:.1f}, azure-cvm/snp {cvm_p50 / snp_p50:.1f} (goal: azure-cvm <= 150 ms)")
    print(json.dumps({"benchmark": "attestation_latency", "requests": args.requests,
                      "attest_p50_ms": round(snp_p50, 2), "attest_p95_ms": round(snp_p95, 2),
                      "azure_cvm_attest_p50_ms": round(cvm_p50, 2), "azure_cvm_attest_p95_ms": round(cvm_p95, 2),
                      "baseline_p50_ms": round(base_p50, 2), "baseline_p95_ms": round(base_p95, 2),
                      "p50_ratio": round(snp_p50 / base_p50, 2),
                      "azure_cvm_snp_p50_ratio": round(cvm_p50 / snp_p50, 2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
