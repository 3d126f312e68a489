"""The emulated paravisor as the guest meets it: Azure's indexes it cannot change, the refresh rule, the boots."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_RC, TPMA_NV

from securetrain.localstack.platform.paravisor import REPORT_INDEX_SIZE, Paravisor
from securetrain.localstack.platform.vtpm import AK_CERT_INDEX_SIZE, PLATFORM_INDEX_ATTRIBUTES, Swtpm
from securetrain.tee.evidence import EvidenceUnavailable
from securetrain.tee.evidence.azure_cvm import AK_CERT_NV_INDEX, HCL_REPORT_NV_INDEX, AzureCvmEvidenceUnavailable
from tests.conftest import free_ports
from tests.integration.conftest import WORKLOAD_MEASUREMENT

pytestmark = pytest.mark.integration


@pytest.fixture
def guest(emulated_cvm) -> Iterator[ESAPI]:
    """The guest's TPM stack, talking to the paravisor."""
    esapi = ESAPI(emulated_cvm.paravisor.tcti)
    try:
        yield esapi
    finally:
        esapi.close()


def read_report(esapi: ESAPI) -> bytes:
    index = esapi.tr_from_tpmpublic(HCL_REPORT_NV_INDEX)
    return b"".join(
        bytes(esapi.nv_read(index, min(1024, REPORT_INDEX_SIZE - offset), offset, auth_handle=ESYS_TR.OWNER))
        for offset in range(0, REPORT_INDEX_SIZE, 1024)
    )


@pytest.mark.parametrize(("index", "size"), [(HCL_REPORT_NV_INDEX, REPORT_INDEX_SIZE), (AK_CERT_NV_INDEX, AK_CERT_INDEX_SIZE)])
def test_the_paravisors_indexes_read_as_azures_and_the_guest_cannot_change_them(guest, index, size) -> None:
    handle = guest.tr_from_tpmpublic(index)
    public, name = guest.nv_read_public(handle)
    assert public.nvPublic.dataSize == size
    assert public.nvPublic.attributes == PLATFORM_INDEX_ATTRIBUTES | TPMA_NV.WRITTEN
    assert bytes(name) == bytes(public.get_name())
    with pytest.raises(TSS2_Exception):
        guest.nv_write(handle, b"forged", 0, auth_handle=ESYS_TR.OWNER)
    with pytest.raises(TSS2_Exception):
        guest.nv_undefine_space(handle, ESYS_TR.OWNER)


def test_the_platform_hierarchy_is_not_the_guests(guest) -> None:
    with pytest.raises(TSS2_Exception) as refused:
        guest.hierarchy_control(ESYS_TR.PLATFORM, ESYS_TR.OWNER, False)
    assert refused.value.error == TPM2_RC.HIERARCHY


def test_reads_past_the_report_or_larger_than_the_vtpm_allows_are_refused(guest) -> None:
    index = guest.tr_from_tpmpublic(HCL_REPORT_NV_INDEX)
    with pytest.raises(TSS2_Exception) as past:
        guest.nv_read(index, 600, 2048, auth_handle=ESYS_TR.OWNER)
    assert past.value.error == TPM2_RC.NV_RANGE
    with pytest.raises(TSS2_Exception) as oversized:
        guest.nv_read(index, 1025, 1024, auth_handle=ESYS_TR.OWNER)
    assert oversized.value.error == TPM2_RC.VALUE


def test_a_report_read_again_at_once_is_the_same_report(guest) -> None:
    """The paravisor makes at most one report per two seconds: a second read right away is not a new one."""
    first = read_report(guest)
    assert read_report(guest) == first and first[:4] == b"HCLA"


def test_the_control_channel_offers_locality_0_alone(emulated_cvm) -> None:
    with socket.create_connection(("127.0.0.1", emulated_cvm.paravisor.port + 1), timeout=5) as control:
        control.sendall(struct.pack(">IB", 5, 0))  # CMD_SET_LOCALITY 0
        assert control.recv(4) == bytes(4)
        control.sendall(struct.pack(">IB", 5, 3))
        assert int.from_bytes(control.recv(4), "big") == 0x3D  # TPM_BAD_LOCALITY
        control.sendall(struct.pack(">II", 2, 0))  # CMD_INIT: resetting the TPM is the host's, not the guest's
        assert int.from_bytes(control.recv(4), "big") == 0x0A
        assert control.recv(4) == b""


def test_concurrent_collections_each_get_their_own_user_data(emulated_cvm) -> None:
    provider = emulated_cvm.provider()
    results: dict[int, dict] = {}

    def collect(worker: int) -> None:
        results[worker] = provider.evidence(bytes([worker]) * 64, bytes([worker]) * 32)

    workers = [threading.Thread(target=collect, args=(worker,)) for worker in (1, 2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert {worker: bytes.fromhex(result["evidence"]["runtimeClaims"]["user-data"]) for worker, result in results.items()} == {
        1: bytes([1]) * 64, 2: bytes([2]) * 64,
    }  # fmt: skip


def test_a_paravisor_that_is_down_leaves_the_evidence_unavailable(emulated_cvm) -> None:
    [port] = free_ports(1)
    with pytest.raises(AzureCvmEvidenceUnavailable) as unavailable:
        emulated_cvm.provider(f"swtpm:host=127.0.0.1,port={port}").evidence(bytes(64), bytes(32))
    assert isinstance(unavailable.value, EvidenceUnavailable)
    assert unavailable.value.step == "open-vtpm"


def test_each_boot_keeps_the_ak_and_measures_the_workload_afresh(emulated_cvm, tmp_path) -> None:
    swtpm, event_log = Swtpm(tmp_path / "vtpm"), tmp_path / "vtpm" / "binary_bios_measurements"
    boots = []
    for _ in range(2):
        swtpm.start()
        try:
            with Paravisor(swtpm, emulated_cvm.snp, emulated_cvm.vtpm_ca, WORKLOAD_MEASUREMENT, event_log) as paravisor:
                guest = ESAPI(paravisor.tcti)
                try:
                    ak = guest.read_public(guest.tr_from_tpmpublic(0x81000003))[0].publicArea
                    _, _, [pcr13] = guest.pcr_read("sha256:13")
                    boots.append((bytes(ak.unique.rsa), bytes(pcr13), event_log.read_bytes()))
                finally:
                    guest.close()
        finally:
            swtpm.stop()
    assert boots[0] == boots[1]
    assert boots[0][1] == hashlib.sha256(bytes(32) + hashlib.sha256(WORKLOAD_MEASUREMENT).digest()).digest()
