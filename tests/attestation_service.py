"""An attestation service process of a test's own, beside the stack's: configured like the stack's (its
simulated platform's root, its identity service, its policy managers), with whatever policy the test sets."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from azure.security.attestation import AttestationAdministrationClient

from securetrain.localstack.identities import LOCAL_TENANT
from securetrain.localstack.layout import repo_root
from securetrain.localstack.pki import LocalCA
from securetrain.localstack.process import start_process, stop_process
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.services.attestation import attestation_roles_path, policy_administration_client
from securetrain.localstack.standins.identity.app import token_issuer
from tests.conftest import LocalStack, free_ports


@contextlib.contextmanager
def attestation_service(stack: LocalStack, directory: Path, *options: str) -> Iterator[str]:
    """Run an attestation service with its state in ``directory`` (and ``options``, e.g. ``--token-lifetime``);
    yield its URL once it answers over TLS; stop it afterwards as the stack stops its services (a client's idle
    connection can hold up a graceful stop: SIGKILL after a grace period)."""
    platform = SimulatedSnpPlatform.load_or_create(Path(stack.env["SECURETRAIN_SNP_PLATFORM_DIR"]))
    files = LocalCA.load_or_create(stack.layout.ca_dir).issue_server_certificate(directory, "attestation")
    (port,) = free_ports(1)
    url = f"https://127.0.0.1:{port}"
    argv = [
        sys.executable, "-m", "securetrain.localstack.standins.attestation_service",
        "--state-dir", str(directory / "state"),
        "--trust-root", str(platform.root_certificate_path),
        "--identity-authority", f"{stack.env['SECURETRAIN_IDENTITY_ENDPOINT']}/{LOCAL_TENANT}",
        "--identity-issuer", token_issuer(LOCAL_TENANT),
        "--ca-bundle", str(stack.ca_bundle),
        "--roles", str(attestation_roles_path(stack.layout)),
        "--port", str(port), "--cert", str(files.cert_path), "--key", str(files.key_path), *options,
    ]  # fmt: skip
    log = directory / "service.log"
    process = start_process(argv, os.environ, log, repo_root())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with requests.get(f"{url}/certs", verify=str(stack.ca_bundle), timeout=1) as response:
                    response.raise_for_status()
                break
            except requests.RequestException:
                if not process.is_running() or time.monotonic() > deadline:
                    raise AssertionError(f"the attestation service did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process, grace_s=3)


def policy_client(stack: LocalStack, url: str, identity: str = "data-owner") -> AttestationAdministrationClient:
    """``azure-security-attestation``'s policy client of the service at ``url``, as the stack's ``identity``."""
    return policy_administration_client(url, stack.credential(identity), stack.ca_bundle)
