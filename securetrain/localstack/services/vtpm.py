"""The emulated Azure CVM's vTPM (:mod:`securetrain.localstack.platform.emulated_vtpm`) as a stack service.

swtpm's state is ``<state>/data/vtpm/``, with the VM's id and the boot's TCG event log
(``binary_bios_measurements``); the vTPM CA is ``<state>/vtpm-ca/``; HCL reports are signed by the simulated
SEV-SNP platform (``<state>/snp-platform/``). The workload measured into PCR 13 at boot is the one the
``snp`` platform states as HOST_DATA (:func:`securetrain.localstack.data_owner.stack_host_data`), so a changed
trainer restarts the service: a new boot, with the new measurement. The guest (the agent) reaches the vTPM with
the tpm2-tss TCTI ``swtpm:host=HOST,port=PORT``; the service uses PORT and PORT + 1 (swtpm's control channel),
in the swtpm protocol, not TLS: on Azure, too, the vTPM is a device of the VM, not a network service.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tpm2_pytss.constants import TPM2_CC, TPM2_RC, TPM2_ST

from securetrain.localstack.data_owner import stack_host_data
from securetrain.localstack.service import HEALTH_TIMEOUT_S, Service, ServiceContext, ServiceUnhealthy

# TPM2_GetRandom of 8 bytes: tag, size, command code, bytesRequested; the answer: tag, size, response code, TPM2B.
_GET_RANDOM = struct.pack(">HIIH", TPM2_ST.NO_SESSIONS, 12, TPM2_CC.GetRandom, 8)
_RESPONSE_HEADER = struct.Struct(">HII")


def event_log_path(context: ServiceContext) -> Path:
    """The TCG event log of the vTPM's boot: what Linux exposes as ``binary_bios_measurements``."""
    return context.data_dir / "binary_bios_measurements"


def tcti(context: ServiceContext) -> str:
    """How a guest names this vTPM to tpm2-tss."""
    return f"swtpm:host={context.host},port={context.port}"


def _argv(context: ServiceContext) -> Sequence[str]:
    layout = context.layout
    return [
        sys.executable, "-m", "securetrain.localstack.platform.emulated_vtpm",
        "--state-dir", str(context.data_dir),
        "--snp-platform-dir", str(layout.snp_platform_dir),
        "--vtpm-ca-dir", str(layout.vtpm_ca_dir),
        "--workload-measurement", stack_host_data(layout).hex(),
        "--event-log", str(event_log_path(context)),
        "--host", context.host,
        "--port", str(context.port),
    ]  # fmt: skip


def _health_check(context: ServiceContext) -> None:
    # A TPM command answered through the paravisor: it booted the vTPM and serves the guest.
    try:
        with socket.create_connection((context.host, context.port), timeout=HEALTH_TIMEOUT_S) as connection:
            connection.sendall(_GET_RANDOM)
            answer = b""
            while len(answer) < _RESPONSE_HEADER.size:
                chunk = connection.recv(_RESPONSE_HEADER.size - len(answer))
                if not chunk:
                    raise ServiceUnhealthy("the vTPM closed the connection without answering TPM2_GetRandom")
                answer += chunk
    except OSError as exc:
        raise ServiceUnhealthy.because(exc) from exc
    _, _, response_code = _RESPONSE_HEADER.unpack(answer)
    if response_code != TPM2_RC.SUCCESS:
        raise ServiceUnhealthy(f"the vTPM answered TPM2_GetRandom with response code 0x{response_code:x}")


def _exports(context: ServiceContext) -> Mapping[str, str]:
    return {
        "SECURETRAIN_VTPM_TCTI": tcti(context),
        "SECURETRAIN_EVENT_LOG": str(event_log_path(context)),
        "SECURETRAIN_VTPM_CA": str(context.layout.vtpm_ca_dir / "ca.pem"),
    }


VTPM = Service(
    name="vtpm",
    description="the emulated Azure CVM's vTPM: swtpm behind the paravisor (HCL reports, AK, measured boot)",
    default_port=10900,
    argv=_argv,
    health_check=_health_check,
    exports=_exports,
    startup_timeout_s=90.0,
    scheme="tcp",
)
