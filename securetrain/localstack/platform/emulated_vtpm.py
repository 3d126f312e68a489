"""``python -m securetrain.localstack.platform.emulated_vtpm``: the emulated Azure CVM's vTPM as one process.

It does what the host does before an Azure confidential VM's guest runs: starts the vTPM (swtpm, its state in
``--state-dir``), boots the paravisor in front of it (:class:`~securetrain.localstack.platform.paravisor.Paravisor`:
the vTPM's attestation identity certified by the vTPM CA in ``--vtpm-ca-dir``, HCL reports signed by the simulated
SEV-SNP platform in ``--snp-platform-dir``, the workload's measurement extended into PCR 13 and recorded in the
event log ``--event-log``), then serves the guest's TPM commands on ``--host``:``--port`` (and swtpm's control
channel on ``--port`` + 1) until SIGTERM or SIGINT, when it stops the paravisor and swtpm. The local stack runs
it as its ``vtpm`` service (:mod:`securetrain.localstack.services.vtpm`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from securetrain.core.errors import SecuretrainError
from securetrain.localstack.platform.paravisor import Paravisor
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.platform.vtpm import Swtpm, VtpmCertificateAuthority

log = logging.getLogger("securetrain.localstack.platform.emulated_vtpm")

WORKLOAD_MEASUREMENT_SIZE = 32


def _measurement(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != WORKLOAD_MEASUREMENT_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not {WORKLOAD_MEASUREMENT_SIZE} bytes in hex")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m securetrain.localstack.platform.emulated_vtpm",
        description="The emulated Azure CVM's vTPM: swtpm behind the paravisor, serving the guest's TPM commands "
        "in swtpm's TCP protocol (tpm2-tss TCTI swtpm:host=HOST,port=PORT).",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="the vTPM's state (swtpm's, the VM's id)")
    parser.add_argument("--snp-platform-dir", type=Path, required=True, help="the simulated SEV-SNP platform's state")
    parser.add_argument("--vtpm-ca-dir", type=Path, required=True, help="the vTPM CA that certifies the AK")
    parser.add_argument(
        "--workload-measurement", type=_measurement, required=True, metavar="HEX",
        help="the workload's 32-byte measurement, extended into PCR 13 at boot",
    )  # fmt: skip
    parser.add_argument("--event-log", type=Path, required=True, help="where the boot's TCG event log is written")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TPM command port (the control channel is the next)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The paravisor looks up handles that may not exist yet, and tpm2-tss logs every miss as an error: what fails
    # for real reaches the paravisor as an exception and is reported from there. (TSS2_LOG set by the caller wins.)
    os.environ.setdefault("TSS2_LOG", "esys+none")
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    swtpm = Swtpm(args.state_dir)
    try:
        snp = SimulatedSnpPlatform.load_or_create(args.snp_platform_dir)
        ca = VtpmCertificateAuthority.load_or_create(args.vtpm_ca_dir)
        swtpm.start()
        paravisor = Paravisor(swtpm, snp, ca, args.workload_measurement, args.event_log, host=args.host, port=args.port)
        paravisor.start()
    except (SecuretrainError, OSError) as exc:
        swtpm.stop()
        print(f"emulated vTPM: error: {exc}", file=sys.stderr)
        return 1
    log.info("emulated vTPM booted (workload %s), serving %s", args.workload_measurement.hex(), paravisor.tcti)
    try:
        stopping.wait()
        log.info("stopping the paravisor and swtpm")
    finally:
        paravisor.stop()
        swtpm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
