"""The confidential VM: bringing it up and releasing it, and the trainer agent's API inside it.

The connection's ``backend`` extra says which VM: ``local`` (the local stack's agent, always running) or
``azure`` (an Azure confidential VM started and deallocated with the Azure provider's ``AzureComputeHook``;
docs/workflow.md, "Hooks"). Either way the agent is reached over mutual TLS with ``client_cert``/``client_key``.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from securetrain.airflow.hooks._connection import ServiceConnection
from securetrain.core.contracts.health import Health
from securetrain.core.cvm_client import CvmClient, CvmUnreachable
from securetrain.core.errors import ConfigurationError

BACKENDS = ("local", "azure")


class ConfidentialVmHook(BaseHook):
    """The CVM named by a ``securetrain_cvm`` connection (see the module documentation for its backends)."""

    conn_name_attr = "cvm_conn_id"
    default_conn_name = "securetrain_cvm"
    conn_type = "securetrain_cvm"
    hook_name = "securetrain confidential VM"

    def __init__(self, cvm_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.cvm_conn_id = cvm_conn_id

    @cached_property
    def connection(self) -> ServiceConnection:
        return ServiceConnection.of(self.get_connection(self.cvm_conn_id))

    @property
    def backend(self) -> str:
        backend = self.connection.optional("backend") or "local"
        if backend not in BACKENDS:
            raise ConfigurationError(f"connection {self.cvm_conn_id!r}: backend {backend!r} is not one of {BACKENDS}")
        return backend

    @property
    def endpoint(self) -> str:
        return self.connection.endpoint

    def get_conn(self) -> CvmClient:
        """A client of the agent's API; close it (or use it as a context manager) when done."""
        cert, key = self.connection.file("client_cert"), self.connection.file("client_key")
        if cert is None or key is None:
            raise ConfigurationError(f"connection {self.cvm_conn_id!r} needs client_cert and client_key (mutual TLS)")
        return CvmClient(self.connection.endpoint, cert=cert, key=key, ca_bundle=self.connection.ca_bundle)

    def _azure_vm(self) -> tuple[Any, str, str]:
        from airflow.providers.microsoft.azure.hooks.compute import AzureComputeHook  # noqa: PLC0415

        compute = AzureComputeHook(azure_conn_id=self.connection.required("azure_conn_id"))
        return compute, self.connection.required("resource_group"), self.connection.required("vm_name")

    def start(self, *, timeout_s: float = 600, poll_s: float = 5) -> Health:
        """Bring the CVM up (azure: start the VM) and wait until its agent answers; its health."""
        if self.backend == "azure":
            compute, group, name = self._azure_vm()
            if compute.get_power_state(group, name) != "running":
                self.log.info("starting confidential VM %s in %s", name, group)
                compute.start_instance(group, name, wait_for_completion=True)
        deadline = time.monotonic() + timeout_s
        with self.get_conn() as client:
            while True:
                try:
                    return client.health()
                except CvmUnreachable:
                    if time.monotonic() > deadline:
                        raise
                    self.log.info("waiting for the trainer agent at %s", self.endpoint)
                    time.sleep(poll_s)

    def release(self) -> str:
        """Release the CVM after a run; what was done, for the log."""
        if self.backend == "azure":
            compute, group, name = self._azure_vm()
            compute.stop_instance(group, name, wait_for_completion=True)
            return f"deallocated confidential VM {name} in {group}"
        return f"the local agent at {self.endpoint} keeps running (it belongs to the local stack)"

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self.get_conn() as client:
                health = client.health()
        except Exception as exc:  # noqa: BLE001 - the UI shows the reason
            return False, str(exc)
        return True, f"agent at {self.endpoint}: TEE {health.tee_type}"
