"""GPU report verification: p50 of verifying the genuine H100 report beside one bare ECDSA P-384 verify.

``verify_gpu_report`` on the genuine report in ``../shared/testdata/nvidia-h100/`` (parsing the SPDM exchange, the
five-certificate chain to NVIDIA's pinned root, the FWID, the report signature, the nonce), N times; the baseline
is the one signature check it cannot avoid — ECDSA P-384 over the same signed bytes with the leaf key, already
loaded — N times in the same run. The ratio says what parsing and the chain cost on top of that signature.

Usage: ``python -m benchmarks.gpu_verification [--repeats 200] [--testdata DIR]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from benchmarks.attestation_latency import percentiles
from securetrain.core.nvidia.certs import GpuCertificateChain
from securetrain.core.nvidia.roots import NVIDIA_DEVICE_ROOTS
from securetrain.core.nvidia.spdm import GpuAttestationReport
from securetrain.core.nvidia.verifier import verify_gpu_report

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "nvidia-h100"
# The nonce the genuine report answers, and a time inside its certificates' validity.
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
WHEN = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def _timed(action, repeats: int) -> list[float]:  # noqa: ANN001 - any callable without arguments
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--testdata", type=Path, default=TESTDATA)
    args = parser.parse_args()
    report = bytes.fromhex(args.testdata.joinpath("hopperAttestationReport.txt").read_text().strip())
    chain_pem = args.testdata.joinpath("hopper_cert_chain_case1.txt").read_bytes()

    def verify() -> None:
        verify_gpu_report(report, GpuCertificateChain.from_pem(chain_pem), NVIDIA_DEVICE_ROOTS,
                          expected_nonce=NONCE, now=WHEN)  # fmt: skip

    parsed = GpuAttestationReport.from_bytes(report)
    leaf_key = GpuCertificateChain.from_pem(chain_pem).leaf_key()
    raw = parsed.response.signature
    signature = encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"))

    def bare() -> None:
        leaf_key.verify(signature, parsed.signed, ec.ECDSA(hashes.SHA384()))

    verify(), bare()  # warm up (imports, OpenSSL's first use of the curve)
    full_p50, full_p95 = percentiles(_timed(verify, args.repeats))
    bare_p50, bare_p95 = percentiles(_timed(bare, args.repeats))
    ratio = full_p50 / bare_p50
    print(f"verify_gpu_report (genuine H100 report, chain, FWID, signature, nonce): p50 {full_p50:.2f} ms, p95 {full_p95:.2f} ms")
    print(f"baseline (one ECDSA P-384 verify of the same bytes, key loaded):        p50 {bare_p50:.2f} ms, p95 {bare_p95:.2f} ms")
    print(f"ratio (p50): {ratio:.1f}x")
    print(json.dumps({"benchmark": "gpu_verification", "repeats": args.repeats, "verify_p50_ms": round(full_p50, 3),
                      "ecdsa_p384_p50_ms": round(bare_p50, 3), "ratio": round(ratio, 2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
