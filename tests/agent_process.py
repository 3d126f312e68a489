"""A trainer agent process of a test's own, beside the stack's: it can be killed, restarted, or run changed code."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import securetrain
from securetrain.core.contracts.jobs import JobView
from securetrain.core.cvm_client import CvmClient
from securetrain.localstack import data_owner
from securetrain.localstack.pki import LocalCA
from tests import jobs
from tests.conftest import free_ports


def wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} (agent exit code {process.poll()})")


def source_copy(directory: Path) -> Path:
    """A copy of the installed ``securetrain`` package under ``directory``; returns the copy's package directory.

    Put ``directory`` first on ``PYTHONPATH`` (``AgentProcess(code_root=directory)``) to run the copy.
    """
    copy = directory / "securetrain"
    shutil.copytree(Path(securetrain.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


#: What of this process's environment an agent never inherits: another service's settings or identity.
NOT_INHERITED = ("SECURETRAIN_", "AZURE_", "IDENTITY_", "AIRFLOW_", "MSI_", "IMDS_")


class AgentProcess:
    """The local CVM's agent over ``work_dir``, on a free port, with the environment the stack starts the
    TEE with and nothing else of the stack's: its settings and its managed identity (``tee_environment``);
    ``environment`` replaces any of it.

    ``code_root``, when given, is put first on ``PYTHONPATH``: the agent then runs (and measures into
    HOST_DATA) the ``securetrain`` package found there (see :func:`source_copy`) instead of the installed one.
    """

    def __init__(self, stack, directory: Path, *, code_root: Path | None = None,
                 environment: dict[str, str] | None = None) -> None:  # fmt: skip
        self._stack = stack
        self.directory = directory
        self.work_dir = directory / "work"
        self.log_path = directory / "agent.log"
        self._code_root = code_root
        self._environment = {**stack.tee_environment(), **(environment or {})}
        self._server = LocalCA.load_or_create(stack.state_dir / "ca").issue_server_certificate(directory, "agent")
        (self.port,) = free_ports(1)
        self._process: subprocess.Popen[bytes] | None = None
        self.client = CvmClient(
            f"https://127.0.0.1:{self.port}", cert=Path(stack.env["SECURETRAIN_CVM_PIPELINE_CERT"]),
            key=Path(stack.env["SECURETRAIN_CVM_PIPELINE_KEY"]), ca_bundle=stack.ca_bundle,
        )  # fmt: skip

    def start(self) -> CvmClient:
        env = {name: value for name, value in os.environ.items() if not name.startswith(NOT_INHERITED)}
        env.update(self._environment)
        if self._code_root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self._code_root), env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "securetrain.localstack.platform.local_cvm", "--port", str(self.port), "--cert",
                 str(self._server.cert_path), "--key", str(self._server.key_path), "--client-ca",
                 str(self._stack.ca_bundle), "--work-dir", str(self.work_dir),
                 *(argument for path in data_owner.trusted_key_paths(self._stack.layout)
                   for argument in ("--data-owner-key", str(path)))],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
            )  # fmt: skip
        wait_port(self.port, self._process)
        return self.client

    def run_job(self, spec: dict[str, Any]) -> JobView:
        """Start the agent, run ``spec`` on it to its end and stop the agent: the job as it ended."""
        client = self.start()
        try:
            return jobs.run_job(client, spec)
        finally:
            self.stop()

    def kill(self) -> None:
        """SIGKILL: the agent gets no chance to save anything, as in a crash."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=30)

    def stop(self) -> None:
        self.client.close()
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
