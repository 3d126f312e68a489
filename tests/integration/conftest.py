"""The emulated Azure confidential VM for the vTPM tests: swtpm, the paravisor in front of it and the IMDS stand-in.

``emulated_cvm`` boots one per test session in a temporary directory (the paravisor on free loopback ports, the
IMDS stand-in as its own process with a certificate of a CA of its own) and shuts everything down at the end.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from securetrain.core.http import HttpsSession
from securetrain.localstack.pki import LocalCA
from securetrain.localstack.platform.paravisor import Paravisor
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.platform.vtpm import Swtpm, VtpmCertificateAuthority
from securetrain.localstack.process import start_process, stop_process
from securetrain.tee.evidence.azure_cvm import THIM_PATH, AzureCvmProvider
from tests.conftest import free_ports

#: The workload the emulated CVM measures at boot (the stack measures securetrain.tee.workload.host_data).
WORKLOAD_MEASUREMENT = hashlib.sha256(b"securetrain test workload").digest()
_IMDS_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EmulatedCvm:
    """A booted emulated CVM and a provider that reads its evidence as the TEE would."""

    root: Path
    swtpm: Swtpm
    paravisor: Paravisor
    snp: SimulatedSnpPlatform
    vtpm_ca: VtpmCertificateAuthority
    imds_endpoint: str
    ca_bundle: Path

    @property
    def event_log(self) -> Path:
        return self.swtpm.state_dir / "binary_bios_measurements"

    def provider(self, tcti: str | None = None) -> AzureCvmProvider:
        """The TEE's provider for this CVM (or for the vTPM at ``tcti``)."""
        return AzureCvmProvider(tcti or self.paravisor.tcti, self.imds_endpoint, event_log=self.event_log,
                                ca_bundle=self.ca_bundle)  # fmt: skip


def _wait_for_imds(endpoint: str, ca_bundle: Path) -> None:
    deadline = time.monotonic() + _IMDS_START_TIMEOUT_S
    with HttpsSession(str(ca_bundle), retries=0) as session:
        while True:
            try:
                if session.get(endpoint + THIM_PATH, headers={"Metadata": "true"}, timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the IMDS stand-in did not answer at {endpoint} within {_IMDS_START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def emulated_cvm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCvm]:
    root = tmp_path_factory.mktemp("cvm")
    snp = SimulatedSnpPlatform.load_or_create(root / "snp-platform")
    vtpm_ca = VtpmCertificateAuthority.load_or_create(root / "vtpm-ca")
    tls_ca = LocalCA.load_or_create(root / "ca")
    tls = tls_ca.issue_server_certificate(root / "certs", "imds")
    [port] = free_ports(1)
    imds = start_process(
        [sys.executable, "-m", "securetrain.localstack.standins.imds", "--snp-platform-dir", str(root / "snp-platform"),
         "--port", str(port), "--cert", str(tls.cert_path), "--key", str(tls.key_path)],
        os.environ, root / "imds.log", root,
    )  # fmt: skip
    swtpm = Swtpm(root / "vtpm")
    try:
        endpoint = f"https://127.0.0.1:{port}"
        _wait_for_imds(endpoint, tls_ca.cert_path)
        swtpm.start()
        paravisor = Paravisor(swtpm, snp, vtpm_ca, WORKLOAD_MEASUREMENT, swtpm.state_dir / "binary_bios_measurements")
        with paravisor:
            yield EmulatedCvm(root, swtpm, paravisor, snp, vtpm_ca, endpoint, tls_ca.cert_path)
    finally:
        swtpm.stop()
        stop_process(imds, grace_s=5.0)
