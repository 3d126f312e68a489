"""Attestation latency: p50/p95 of 100 SEV-SNP attestations beside an HTTPS round trip to the same service.

A local stack runs in a temporary state directory on free ports. The TEE side is what a job does:
make a report on the simulated platform binding its runtime data, submit it, validate the token.
The baseline is ``GET /certs`` on the same service and connection: what TLS and HTTP alone cost.

Usage: ``python -m benchmarks.attestation_latency [--requests 100]``
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.services.attestation import approved_reference_values
from securetrain.core.attestation.maa import AttestationServiceClient, report_data_for, runtime_data_bytes
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator
from securetrain.localstack import StackConfig, down, up
from securetrain.localstack.registry import SERVICES


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="securetrain-bench-") as tmp:
        config = StackConfig.resolve(Path(tmp), {service.name: free_port() for service in SERVICES})
        try:
            env = up(config)
            endpoint, ca = env["SECURETRAIN_ATTESTATION_ENDPOINT"], env["SECURETRAIN_CA_BUNDLE"]
            _, (host_data,) = approved_reference_values(Path(env["SECURETRAIN_ATTESTATION_POLICY"]).read_text())
            platform = SimulatedSnpPlatform.load_or_create(Path(env["SECURETRAIN_SNP_PLATFORM_DIR"]))
            measurement = bytes.fromhex(env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"])
            client = AttestationServiceClient(endpoint, verify=ca)
            validator = TokenValidator(AuthorityKeys(endpoint, verify=ca))
            session = requests.Session()

            baseline, attest = [], []
            for _ in range(args.requests):
                start = time.perf_counter()
                session.get(f"{endpoint}/certs", verify=ca, timeout=10).raise_for_status()
                baseline.append(time.perf_counter() - start)
            for _ in range(args.requests):
                nonce = secrets.token_hex(16)
                runtime = runtime_data_bytes({"keys": [], "nonce": nonce})
                start = time.perf_counter()
                evidence = platform.report(
                    report_data=report_data_for(runtime), measurement=measurement, host_data=host_data)
                token = client.attest_sev_snp_vm(evidence.report, evidence.vcek_chain_pem, runtime, nonce)
                validator.validate(token, expected_nonce=nonce)
                attest.append(time.perf_counter() - start)
        finally:
            down(config)
    attest_p50, attest_p95 = percentiles(attest)
    base_p50, base_p95 = percentiles(baseline)
    print(f"attest (report + POST /attest/SevSnpVm + token validation): p50 {attest_p50:.1f} ms, p95 {attest_p95:.1f} ms")
    print(f"baseline (GET /certs, same service):                      p50 {base_p50:.1f} ms, p95 {base_p95:.1f} ms")
    print(f"ratio p50 attest/baseline: {attest_p50 / base_p50:.1f}")
    print(json.dumps({"benchmark": "attestation_latency", "requests": args.requests,
                      "attest_p50_ms": round(attest_p50, 2), "attest_p95_ms": round(attest_p95, 2),
                      "baseline_p50_ms": round(base_p50, 2), "baseline_p95_ms": round(base_p95, 2),
                      "p50_ratio": round(attest_p50 / base_p50, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
