"""The emulated Azure CVM's paravisor: the only way from the guest to its vTPM, and the author of the HCL report.

On an Azure confidential VM the guest's TPM commands go to the paravisor (the HCL, VMPL 0), which runs the vTPM.
What it adds to a plain TPM (microsoft/openvmm ``vm/devices/tpm``, ``openhcl/openhcl_attestation_protocol``):

- at boot, the vTPM's attestation identity (:func:`securetrain.localstack.platform.vtpm.provision`) and NV
  index ``0x01400001``, defined in the platform hierarchy with a password of its own; then it disables the
  platform hierarchy, so the guest cannot use it;
- the **HCL report** in that index: a header (``HCLA``), an SNP report from the secure processor whose
  REPORT_DATA is SHA-256 of the runtime claims followed by 32 zero bytes, and the runtime claims, a JSON document
  naming the vTPM's AK and EK (``HCLAkPub``, ``HCLEkPub``), the VM's configuration, and ``user-data``: the 64
  bytes the guest last wrote to NV ``0x01400002``. The paravisor makes a new report when a TPM2_NV_Read of
  ``0x01400001`` starts at offset 0, at most once every :data:`REPORT_RENEWAL_INTERVAL_S` (openvmm
  ``refresh_device_attestation_data_on_nv_read``, ``REPORT_TIMER_PERIOD``); a read within that interval gets the
  report as it was. HOST_DATA is zero, as on Azure.

:class:`Paravisor` does the same between a guest and swtpm. The guest talks to it in swtpm's TCP protocol
(what ``tpm2-tss``'s swtpm TCTI speaks: raw TPM commands on port N, the control channel on N + 1, where only
locality 0 may be chosen: power and reset are the host's, not the guest's). Every command goes to the vTPM
unchanged except the two that touch ``0x01400001``, because libtpms holds at most 2048 bytes in an index while
Azure's HCL report index holds 2600 (the size of the genuine report's NV content). The vTPM's index keeps the
report's first 2048 bytes and the attributes and password above; the paravisor answers TPM2_NV_ReadPublic with
the index's real size (and the name that follows from it), and TPM2_NV_Read by asking the vTPM the same read for
zero bytes (so the vTPM checks the authorization, the attributes and that the index exists) and then returning
the requested part of the whole report. That works for password authorization, which every Azure guest tool
uses; a read under an HMAC session fails its authorization.

Commands are handled one at a time (swtpm serves one connection; the guest's run in turn, as on a TPM).

The report and its runtime claims are built by the core's :mod:`securetrain.core.azure_cvm.hcl`, the same code the
verifier parses them with, which reproduces the genuine Azure report byte for byte.
"""

from __future__ import annotations

import logging
import secrets
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.TCTI import PyTCTI
from tpm2_pytss.constants import ESYS_TR, TPM2_CC, TPM2_RC, TPM2_ST
from tpm2_pytss.types import TPM2B_NV_PUBLIC

from securetrain.core.attestation.maa import report_data_for
from securetrain.core.azure_cvm.hcl import HclReport, RuntimeClaims, VmConfiguration
from securetrain.localstack.errors import StackError
from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.localstack.platform.measured_boot import measure_workload
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.platform.vtpm import (
    NV_BUFFER_MAX,
    NV_INDEX_MAX,
    PCR_BANKS,
    Swtpm,
    VtpmCertificateAuthority,
    define_platform_index,
    provision,
    write_index,
)
from securetrain.tee.evidence.azure_cvm import HCL_REPORT_NV_INDEX, USER_DATA_NV_INDEX, USER_DATA_SIZE, find_entity

logger = logging.getLogger(__name__)

#: The size of the HCL report index: the genuine report's NV content is 2600 bytes.
REPORT_INDEX_SIZE = 2600
#: The paravisor makes at most one report per this many seconds (openvmm ``REPORT_TIMER_PERIOD``).
REPORT_RENEWAL_INTERVAL_S = 2.0
#: What the runtime claims say of the local CVM: no serial console, no UEFI secure boot, a TPM (the fields Azure's
#: paravisor writes; the VM's id is the vTPM's).
LOCAL_VM_CONFIGURATION = {"console_enabled": False, "secure_boot": False, "tpm_enabled": True}

# TPM messages: tag, size, command or response code; libtpms takes and gives at most 4096 bytes.
_TPM_HEADER = struct.Struct(">HII")
_MAX_TPM_MESSAGE = 4096
# swtpm's control channel: a 32-bit command code; TPM 1.2 result codes.
_CMD_SET_LOCALITY = 5
_TPM_SUCCESS, _TPM_BAD_ORDINAL, _TPM_BAD_LOCALITY = 0x00, 0x0A, 0x3D
_VTPM_TIMEOUT_S = 60.0  # the vTPM making an RSA key takes a while
_GUEST_IDLE_TIMEOUT_S = 300.0
_PORT_ATTEMPTS = 20
_SHUTDOWN_POLL_S = 0.05
# TPM2_NV_Read: header, authHandle and nvIndex, authorizationSize, a password session (9 bytes), size and offset.
_NV_READ_MIN_SIZE = 10 + 8 + 4 + 9 + 4


def _receive(connection: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes; b"" when the peer closed before the first one."""
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            if data:
                raise ConnectionError("the peer closed the connection inside a message")
            return b""
        data += chunk
    return data


def _receive_tpm_message(connection: socket.socket) -> bytes:
    """One TPM command or response (b"" at a clean end of the connection)."""
    header = _receive(connection, _TPM_HEADER.size)
    if not header:
        return b""
    _, size, _ = _TPM_HEADER.unpack(header)
    if not _TPM_HEADER.size <= size <= _MAX_TPM_MESSAGE:
        raise ConnectionError(f"a TPM message of {size} bytes is malformed")
    rest = _receive(connection, size - _TPM_HEADER.size)
    if len(rest) != size - _TPM_HEADER.size:
        raise ConnectionError("the peer closed the connection inside a message")
    return header + rest


def _response(tag: int, response_code: int, body: bytes = b"") -> bytes:
    return _TPM_HEADER.pack(tag, _TPM_HEADER.size + len(body), response_code) + body


class _Vtpm:
    """The paravisor's one connection to swtpm: a command and its response at a time (callers hold the lock)."""

    def __init__(self, socket_path: Path) -> None:
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connection.settimeout(_VTPM_TIMEOUT_S)
        self._connection.connect(str(socket_path))

    def execute(self, command: bytes) -> bytes:
        self._connection.sendall(command)
        response = _receive_tpm_message(self._connection)
        if not response:
            raise ConnectionError("the vTPM closed its connection")
        return response

    def close(self) -> None:
        self._connection.close()


class _ParavisorTcti(PyTCTI):
    """The paravisor's own TPM commands (provisioning, the report) go down the same connection as the guest's."""

    def __init__(self, vtpm: _Vtpm) -> None:
        super().__init__(max_size=_MAX_TPM_MESSAGE)
        self._vtpm = vtpm
        self._response = b""

    def do_transmit(self, command: bytes) -> None:
        self._response = self._vtpm.execute(bytes(command))

    def do_receive(self, timeout: int) -> bytes:
        response, self._response = self._response, b""
        return response


class _Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        super().__init__(address, _Connection)


class _Connection(socketserver.BaseRequestHandler):
    server: _Listener

    def handle(self) -> None:
        self.request.settimeout(_GUEST_IDLE_TIMEOUT_S)
        try:
            self.server.serve(self.request)
        except OSError as exc:  # ConnectionError included: the guest left, stalled or spoke nonsense
            logger.debug("guest connection closed: %s", exc)


class Paravisor:
    """The paravisor of one emulated CVM: boots its vTPM ``vtpm`` (started), signs reports with the simulated
    secure processor ``snp``, has AKs certified by ``ca``, measures ``workload_measurement`` into the vTPM (event
    log ``event_log``) and serves the guest on ``host``:``port`` and ``port`` + 1 (``port`` 0: free ports)."""

    def __init__(
        self,
        vtpm: Swtpm,
        snp: SimulatedSnpPlatform,
        ca: VtpmCertificateAuthority,
        workload_measurement: bytes,
        event_log: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        report_interval_s: float = REPORT_RENEWAL_INTERVAL_S,
    ) -> None:
        self._swtpm, self._snp, self._ca = vtpm, snp, ca
        self._workload_measurement, self._event_log = workload_measurement, event_log
        self._address = (host, port)
        self._report_interval_s = report_interval_s
        self._lock = threading.Lock()
        self._listeners: list[_Listener] = []

    @property
    def port(self) -> int:
        """The guest's port (TPM commands; the control channel is the next one)."""
        return self._listeners[0].server_address[1]

    @property
    def tcti(self) -> str:
        """How a guest names this vTPM to tpm2-tss: the swtpm TCTI's configuration."""
        return f"swtpm:host={self._address[0]},port={self.port}"

    def start(self) -> None:
        """Boot: provision the vTPM, make the first report, measure the workload, lock the platform hierarchy;
        then serve the guest."""
        self._vtpm = _Vtpm(self._swtpm.socket_path)
        self._esapi = ESAPI(_ParavisorTcti(self._vtpm))
        booted = False
        try:
            with self._lock:
                self._keys = provision(self._esapi, self._ca, self._swtpm.vm_unique_id)
                self._report_index = define_platform_index(self._esapi, HCL_REPORT_NV_INDEX, NV_INDEX_MAX,
                                                           secrets.token_bytes(8))  # fmt: skip
                self._renew_report()
                measure_workload(self._esapi, self._workload_measurement, PCR_BANKS, self._event_log)
                self._esapi.hierarchy_control(ESYS_TR.PLATFORM, ESYS_TR.PLATFORM, False)
            self._listeners = self._listen()
            booted = True
        except TSS2_Exception as exc:
            raise StackError(f"the paravisor could not boot the vTPM: {exc}") from None
        finally:
            if not booted:
                self._close_vtpm()
        for listener in self._listeners:
            threading.Thread(target=listener.serve_forever, args=(_SHUTDOWN_POLL_S,),
                             name=f"paravisor-{listener.server_address[1]}", daemon=True).start()  # fmt: skip
        logger.info("paravisor serving the guest's vTPM at %s", self.tcti)

    def stop(self) -> None:
        for listener in self._listeners:
            listener.shutdown()
            listener.server_close()
        self._listeners = []
        with self._lock:
            self._close_vtpm()

    def _close_vtpm(self) -> None:
        self._esapi.close()
        self._vtpm.close()

    def _listen(self) -> list[_Listener]:
        host, port = self._address
        for _ in range(_PORT_ATTEMPTS if port == 0 else 1):
            commands = _Listener((host, port), self._serve_commands)
            try:
                control = _Listener((host, commands.server_address[1] + 1), self._serve_control)
            except OSError:
                commands.server_close()
                if port:
                    raise
                continue
            return [commands, control]
        raise StackError(f"found no two adjacent free ports on {host} for the paravisor")

    def _serve_commands(self, connection: socket.socket) -> None:
        while command := _receive_tpm_message(connection):
            with self._lock:
                response = self._execute(command)
            connection.sendall(response)

    def _serve_control(self, connection: socket.socket) -> None:
        while code := _receive(connection, 4):
            if int.from_bytes(code, "big") != _CMD_SET_LOCALITY:
                connection.sendall(_TPM_BAD_ORDINAL.to_bytes(4, "big"))
                return
            locality = _receive(connection, 1)
            connection.sendall((_TPM_SUCCESS if locality == b"\0" else _TPM_BAD_LOCALITY).to_bytes(4, "big"))

    def _execute(self, command: bytes) -> bytes:
        _, _, code = _TPM_HEADER.unpack_from(command)
        if code == TPM2_CC.NV_ReadPublic and command[10:14] == HCL_REPORT_NV_INDEX.to_bytes(4, "big"):
            return self._report_public_area(command)
        if (
            code == TPM2_CC.NV_Read
            and len(command) >= _NV_READ_MIN_SIZE
            and command[14:18] == HCL_REPORT_NV_INDEX.to_bytes(4, "big")
        ):
            return self._read_report(command)
        return self._vtpm.execute(command)

    def _report_public_area(self, command: bytes) -> bytes:
        """The vTPM's public area of the report index, with the index's real size and the name that follows."""
        tag, _, _ = _TPM_HEADER.unpack_from(command)
        if tag != TPM2_ST.NO_SESSIONS:
            # A session (audit, encryption) would sign or encrypt the vTPM's answer, not the one given here.
            return _response(TPM2_ST.NO_SESSIONS, TPM2_RC.AUTH_UNAVAILABLE)
        answer = self._vtpm.execute(command)
        if _TPM_HEADER.unpack_from(answer)[2] != TPM2_RC.SUCCESS:
            return answer
        public, _ = TPM2B_NV_PUBLIC.unmarshal(answer[_TPM_HEADER.size :])
        public.nvPublic.dataSize = REPORT_INDEX_SIZE
        return _response(TPM2_ST.NO_SESSIONS, TPM2_RC.SUCCESS, public.marshal() + public.get_name().marshal())

    def _read_report(self, command: bytes) -> bytes:
        """TPM2_NV_Read of the report index: a new report first when the read starts at 0 (and one is due);
        the vTPM checks the authorization on the same read of zero bytes; the bytes come from the whole report."""
        size, offset = struct.unpack_from(">HH", command, len(command) - 4)
        if offset == 0 and time.monotonic() - self._renewed_at >= self._report_interval_s:
            try:
                self._renew_report()
            except (TSS2_Exception, StackError) as exc:
                # As the paravisor does: the guest reads the report it has.
                logger.error("the HCL report could not be renewed: %s", exc)
        answer = self._vtpm.execute(command[:-4] + bytes(4))
        tag, _, response_code = _TPM_HEADER.unpack_from(answer)
        if response_code != TPM2_RC.SUCCESS or tag != TPM2_ST.SESSIONS:
            return answer
        if size > NV_BUFFER_MAX:
            return _response(TPM2_ST.NO_SESSIONS, TPM2_RC.VALUE | TPM2_RC.P | TPM2_RC.RC1)
        if offset + size > REPORT_INDEX_SIZE:
            return _response(TPM2_ST.NO_SESSIONS, TPM2_RC.NV_RANGE)
        # The answer to the probe: parameterSize (4 bytes), an empty TPM2B_MAX_NV_BUFFER (2), the sessions.
        sessions = answer[_TPM_HEADER.size + 4 + 2 :]
        data = self._report[offset : offset + size]
        parameters = len(data).to_bytes(2, "big") + data
        return _response(TPM2_ST.SESSIONS, TPM2_RC.SUCCESS, len(parameters).to_bytes(4, "big") + parameters + sessions)

    def _renew_report(self) -> None:
        """A new HCL report for the user data the guest wrote last, into the report index."""
        user_data = self._user_data()
        configuration = VmConfiguration(**LOCAL_VM_CONFIGURATION, vm_unique_id=self._swtpm.vm_unique_id)
        claims = RuntimeClaims.build(ak_public_key=self._keys.ak, ek_public_key=self._keys.ek,
                                     vm_configuration=configuration, user_data=user_data).to_bytes()  # fmt: skip
        evidence = self._snp.report(report_data=report_data_for(claims), measurement=LAUNCH_MEASUREMENT, host_data=bytes(32))
        report = HclReport.build(evidence.report, claims).to_bytes()
        if len(report) > REPORT_INDEX_SIZE:
            raise StackError(f"an HCL report of {len(report)} bytes does not fit the {REPORT_INDEX_SIZE}-byte index")
        content = report.ljust(REPORT_INDEX_SIZE, b"\0")
        write_index(self._esapi, self._report_index, content[:NV_INDEX_MAX])
        self._report, self._renewed_at = content, time.monotonic()
        logger.info("HCL report renewed (user data %s...)", user_data[:8].hex())

    def _user_data(self) -> bytes:
        """What the guest last wrote to NV 0x01400002, zero-padded to 64 bytes; zeros while it wrote nothing."""
        handle = find_entity(self._esapi, USER_DATA_NV_INDEX)
        if handle is None:
            return bytes(USER_DATA_SIZE)
        try:
            size = min(self._esapi.nv_read_public(handle)[0].nvPublic.dataSize, USER_DATA_SIZE)
            data = bytes(self._esapi.nv_read(handle, size, 0, auth_handle=ESYS_TR.OWNER))
        except TSS2_Exception as exc:
            if exc.error != TPM2_RC.NV_UNINITIALIZED:
                raise
            data = b""
        finally:
            self._esapi.tr_close(handle)
        return data.ljust(USER_DATA_SIZE, b"\0")

    def __enter__(self) -> Paravisor:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
