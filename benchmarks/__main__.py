"""Run every benchmark, one process each, so that one's memory does not count against another's."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["benchmarks.sealed", "benchmarks.attestation_latency", "benchmarks.release_latency",
              "benchmarks.dag_parsing", "benchmarks.trainer", "benchmarks.streaming", "benchmarks.distributed",
              "benchmarks.dp_sgd", "benchmarks.gpu_verification"]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", name]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
