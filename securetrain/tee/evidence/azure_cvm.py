"""Evidence from an Azure confidential VM: the paravisor's HCL report and an AK-signed quote of the vTPM.

On an Azure confidential VM (SEV-SNP behind Microsoft's paravisor, the HCL) the guest has no SEV-SNP device:
it reaches the hardware only through its vTPM, which the paravisor implements. What this provider reads, as
Azure's own guest tools do (Azure/confidential-computing-cvm-guest-attestation, Azure/cvm-attestation-tools,
Azure/azure-cleanroom's ``cvm-attestation-agent``, the paravisor's source in microsoft/openvmm):

- NV index ``0x01400002`` (the guest's user data, 64 bytes): written first; the guest defines the index
  (owner read/write) when it is missing or of another size.
- NV index ``0x01400001`` (the HCL report): a 32-byte header (``HCLA``), the SNP report, then the runtime
  claims (``HCLAkPub``, ``HCLEkPub``, the VM configuration, ``user-data``) whose SHA-256 is the report's
  REPORT_DATA. The paravisor makes a new report when a read of this index starts at offset 0, from what the
  user-data index holds then, at most once every two seconds (openvmm ``REPORT_TIMER_PERIOD``): a report
  that still carries other user data is read again after a pause.
- NV index ``0x01C101D0``: the AK certificate (Azure's "Global Virtual TPM CA"), as the whole index holds it
  (the DER certificate and the index's zero padding).
- A TPM2_Quote by the AK at persistent handle ``0x81000003`` over SHA-256 PCRs 0-23 (the set the genuine
  evidence quotes; Azure's C++ library quotes only 0-7, which would leave the workload's PCR out) with the
  verifier's nonce as qualifying data, and the values of those PCRs.
- The TCG event log (on Azure ``/sys/kernel/security/tpm0/binary_bios_measurements``).
- From IMDS: the VCEK chain (THIM, ``GET /metadata/THIM/amd/certification``) and the VM's image reference.

The document it returns has the shape of Azure-captured evidence (``report.snpCvm`` of
``testdata/azure-cvm/evidence.json``): ``evidence`` {``tpmQuote`` (TPM2B_ATTEST then TPMT_SIGNATURE),
``hclReport``, ``snpReport``, ``aikCert`` (base64), ``pcrs`` (index -> base64), ``runtimeClaims`` (the claims the
hardware signs, as JSON)}, ``nonce`` (base64), ``platformCertificates`` (VCEK, ASK, ARK as PEM) and
``imageReference``; ``evidence`` also holds ``eventLog`` (base64), which Azure sends MAA as ``TcgLogs``.
Nothing here decides whether the evidence is good: the verifier does. The checks here only refuse to hand on
evidence that does not answer the request (other user data, another nonce, a quote over other PCR values).

IMDS is plain HTTP on the link-local address 169.254.169.254, answered by the host to this VM alone; that
address is the one http URL this provider accepts (nothing it fetches there is trusted: the VCEK chain is
verified up to AMD's root, the image reference is informational). Any other endpoint must be https.

One evidence collection at a time per provider: the user-data write and the report read must not interleave
with another job's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_PT_NV, TPM2_RC, TPM2_ST, TPMA_NV
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_ATTEST, TPMS_NV_PUBLIC, TPMT_SIG_SCHEME
from urllib3.util.retry import Retry

from securetrain.core.azure_cvm.errors import CvmEvidenceError
from securetrain.core.azure_cvm.hcl import USER_DATA_SIZE, HclReport, RuntimeClaims
from securetrain.core.errors import ConfigurationError
from securetrain.core.http import BACKOFF_S, CONNECT_TIMEOUT_S, READ_TIMEOUT_S, RETRIES, RETRY_STATUSES, HttpsSession
from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.tee.evidence.base import EvidenceError, EvidenceUnavailable

log = logging.getLogger(__name__)

HCL_REPORT_NV_INDEX = 0x01400001
USER_DATA_NV_INDEX = 0x01400002
AK_CERT_NV_INDEX = 0x01C101D0
AK_PERSISTENT_HANDLE = 0x81000003
#: The PCRs quoted, all of the SHA-256 bank.
QUOTED_PCRS = tuple(range(24))
QUOTE_BANK = "sha256"

THIM_PATH = "/metadata/THIM/amd/certification"
IMAGE_REFERENCE_PATH = "/metadata/instance/compute/storageProfile/imageReference"
IMDS_API_VERSION = "2025-04-07"
#: The fields of IMDS's image reference, in the order Azure-captured evidence lists them.
IMAGE_REFERENCE_FIELDS = (
    "id", "offer", "publisher", "sku", "version", "communityGalleryImageId", "sharedGalleryImageId", "exactVersion",
)  # fmt: skip
_IMDS_ADDRESS = "169.254.169.254"
# IMDS asks clients to retry throttling (429) and its 410 and 5xx answers with backoff.
_IMDS_RETRY_STATUSES = (410, 429, 500, *RETRY_STATUSES)

#: Reads of the HCL report before giving up on one that carries our user data, and the pause between them:
#: the paravisor refreshes the report at most once every 2 s.
REPORT_READ_ATTEMPTS = 4
REPORT_READ_PAUSE_S = 1.0
#: The nonce is the quote's qualifying data: at most 32 bytes, what Azure's vTPM is known to take (a TPM2B_DATA
#: holds one digest of the TPM's largest hash) and what the genuine evidence carries.
NONCE_MIN_SIZE, NONCE_MAX_SIZE = 16, 32

class AzureCvmEvidenceUnavailable(EvidenceUnavailable):
    """A step of collecting the evidence failed (the vTPM, the event log, IMDS); ``step`` names it."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"Azure CVM evidence, step {step}: {detail}")
        self.step = step


class AzureCvmEvidenceInvalid(EvidenceError):
    """The platform answered with evidence that does not answer the request; ``step`` names where."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"Azure CVM evidence, step {step}: {detail}")
        self.step = step


def read_hcl_report(blob: bytes) -> tuple[HclReport, RuntimeClaims]:
    """The HCL report NV ``0x01400001`` holds and the runtime claims it carries, read by the core's strict parsers
    (what does not parse is not handed on; whether it is genuine is the verifier's question)."""
    try:
        report = HclReport.from_bytes(blob)
        return report, RuntimeClaims.from_bytes(report.runtime_claims)
    except CvmEvidenceError as exc:
        raise AzureCvmEvidenceInvalid("read-hcl-report", str(exc)) from None


def _imds_session(endpoint: str, ca_bundle: Path | None) -> requests.Session:
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return HttpsSession(str(ca_bundle) if ca_bundle is not None else True)
    if parts.scheme == "http" and parts.hostname == _IMDS_ADDRESS and parts.port in (None, 80):
        session = requests.Session()
        # IMDS refuses requests that came through a proxy; the environment's proxy settings must not apply.
        session.trust_env = False
        retry = Retry(total=RETRIES, backoff_factor=BACKOFF_S, status_forcelist=_IMDS_RETRY_STATUSES,
                      allowed_methods=None, raise_on_status=False)  # fmt: skip
        session.mount("http://", HTTPAdapter(max_retries=retry))
        return session
    raise ConfigurationError(
        f"IMDS endpoint {endpoint!r}: use https, or Azure's http://{_IMDS_ADDRESS} (IMDS's own link-local address)"
    )


class AzureCvmProvider:
    """Evidence of this Azure confidential VM through its vTPM at ``tcti`` (``device:/dev/tpmrm0`` on Azure,
    ``swtpm:host=127.0.0.1,port=N`` for the local stack's emulated paravisor) and its IMDS at ``imds_endpoint``
    (``ca_bundle`` for an https one), with the TCG event log at ``event_log``."""

    tee_type = "azure-cvm"

    def __init__(
        self, tcti: str, imds_endpoint: str, *, event_log: Path, ca_bundle: Path | None = None
    ) -> None:
        self._tcti = tcti
        self._imds_endpoint = imds_endpoint.rstrip("/")
        self._imds = _imds_session(imds_endpoint, ca_bundle)
        self._event_log = event_log
        self._lock = threading.Lock()

    def evidence(self, user_data: bytes, nonce: bytes) -> dict[str, Any]:
        """A fresh evidence document whose HCL report carries ``user_data`` (64 bytes) and whose quote carries
        ``nonce`` (16 to 32 bytes, the verifier's)."""
        if len(user_data) != USER_DATA_SIZE:
            raise AzureCvmEvidenceInvalid("check-request", f"user data must be {USER_DATA_SIZE} bytes, got {len(user_data)}")
        if not NONCE_MIN_SIZE <= len(nonce) <= NONCE_MAX_SIZE:
            raise AzureCvmEvidenceInvalid(
                "check-request", f"the nonce must be {NONCE_MIN_SIZE} to {NONCE_MAX_SIZE} bytes, got {len(nonce)}"
            )
        with self._lock, self._vtpm() as esapi:
            _write_user_data(esapi, user_data)
            hcl_report, snp_report, claims = _fresh_hcl_report(esapi, user_data)
            aik_cert = _read_nv(esapi, AK_CERT_NV_INDEX, "read-ak-certificate")
            quote = _quote(esapi, nonce)
            pcrs = _read_pcrs(esapi)
            _check_quote(quote, nonce, pcrs)
        return {
            "evidence": {
                "tpmQuote": _b64(quote),
                "hclReport": _b64(hcl_report),
                "snpReport": _b64(snp_report),
                "aikCert": _b64(aik_cert),
                "pcrs": {str(index): _b64(pcrs[index]) for index in QUOTED_PCRS},
                "runtimeClaims": claims,
                "eventLog": _b64(self._read_event_log()),
            },
            "nonce": _b64(nonce),
            "platformCertificates": self._vcek_chain(),
            "imageReference": self._image_reference(),
        }

    @contextlib.contextmanager
    def _vtpm(self) -> Iterator[ESAPI]:
        try:
            esapi = ESAPI(self._tcti)
        except TSS2_Exception as exc:
            raise AzureCvmEvidenceUnavailable("open-vtpm", f"no vTPM at {self._tcti} ({exc})") from None
        try:
            yield esapi
        finally:
            esapi.close()

    def _read_event_log(self) -> bytes:
        try:
            return self._event_log.read_bytes()
        except OSError as exc:
            raise AzureCvmEvidenceUnavailable("read-event-log", f"cannot read {self._event_log}: {exc.strerror or exc}") from None

    def _vcek_chain(self) -> str:
        answer = self._imds_get(THIM_PATH, {}, "fetch-vcek-chain")
        vcek, chain = answer.get("vcekCert"), answer.get("certificateChain")
        if not isinstance(vcek, str) or not isinstance(chain, str):
            raise AzureCvmEvidenceInvalid("fetch-vcek-chain", "THIM's answer lacks vcekCert or certificateChain")
        bundle = f"{vcek.strip()}\n{chain.strip()}\n"
        try:
            CertificateChain.from_pem_bundle(bundle.encode())
        except SnpEvidenceError as exc:
            raise AzureCvmEvidenceInvalid("fetch-vcek-chain", f"THIM's certificates are not a VCEK chain: {exc}") from None
        return bundle

    def _image_reference(self) -> dict[str, str]:
        answer = self._imds_get(IMAGE_REFERENCE_PATH, {"api-version": IMDS_API_VERSION}, "fetch-image-reference")
        if not all(isinstance(answer.get(name, ""), str) for name in IMAGE_REFERENCE_FIELDS):
            raise AzureCvmEvidenceInvalid("fetch-image-reference", "IMDS's image reference holds a non-string field")
        return {name: answer.get(name, "") for name in IMAGE_REFERENCE_FIELDS}

    def _imds_get(self, path: str, query: dict[str, str], step: str) -> dict[str, Any]:
        url = self._imds_endpoint + path
        try:
            response = self._imds.get(url, params=query, headers={"Metadata": "true"},
                                      timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))  # fmt: skip
        except requests.RequestException as exc:
            raise AzureCvmEvidenceUnavailable(step, f"no answer from {url}: {exc}") from None
        if response.status_code != 200:
            raise AzureCvmEvidenceUnavailable(step, f"{url} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AzureCvmEvidenceInvalid(step, f"{url} did not answer with a JSON object")
        return answer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@contextlib.contextmanager
def _tpm_step(step: str) -> Iterator[None]:
    """TPM errors inside read as this step's unavailability."""
    try:
        yield
    except TSS2_Exception as exc:
        raise AzureCvmEvidenceUnavailable(step, f"the vTPM refused: {exc}") from None


def find_entity(esapi: ESAPI, tpm_handle: int) -> ESYS_TR | None:
    """The ESAPI object for ``tpm_handle``, or None when the vTPM has no such entity."""
    try:
        return esapi.tr_from_tpmpublic(tpm_handle)
    except TSS2_Exception as exc:
        if exc.error == TPM2_RC.HANDLE:
            return None
        raise


def _nv_buffer_max(esapi: ESAPI, step: str) -> int:
    _, capabilities = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1)
    for entry in capabilities.data.tpmProperties:
        if entry.property == TPM2_PT_NV.BUFFER_MAX:
            return int(entry.value)
    raise AzureCvmEvidenceUnavailable(step, "the vTPM does not report its NV buffer size")


def _read_nv(esapi: ESAPI, index: int, step: str) -> bytes:
    """The whole content of NV ``index``, read with the owner's authorization in the vTPM's largest chunks."""
    with _tpm_step(step):
        handle = find_entity(esapi, index)
        if handle is None:
            raise AzureCvmEvidenceUnavailable(step, f"the vTPM has no NV index 0x{index:08x}")
        public, _ = esapi.nv_read_public(handle)
        size, chunk = public.nvPublic.dataSize, _nv_buffer_max(esapi, step)
        data = b"".join(
            bytes(esapi.nv_read(handle, min(chunk, size - offset), offset, auth_handle=ESYS_TR.OWNER))
            for offset in range(0, size, chunk)
        )
    if len(data) != size:
        raise AzureCvmEvidenceInvalid(step, f"NV 0x{index:08x} gave {len(data)} of its {size} bytes")
    return data


def _write_user_data(esapi: ESAPI, user_data: bytes) -> None:
    """Write ``user_data`` to NV 0x01400002, (re)defining the index as Azure's guest tools do when needed."""
    with _tpm_step("write-user-data"):
        handle = find_entity(esapi, USER_DATA_NV_INDEX)
        if handle is not None and esapi.nv_read_public(handle)[0].nvPublic.dataSize != USER_DATA_SIZE:
            esapi.nv_undefine_space(handle, ESYS_TR.OWNER)
            handle = None
        if handle is None:
            public = TPMS_NV_PUBLIC(nvIndex=USER_DATA_NV_INDEX, nameAlg=TPM2_ALG.SHA256,
                                    attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, dataSize=USER_DATA_SIZE)  # fmt: skip
            handle = esapi.nv_define_space(None, TPM2B_NV_PUBLIC(nvPublic=public), ESYS_TR.OWNER)
        esapi.nv_write(handle, user_data, 0, auth_handle=ESYS_TR.OWNER)


def _fresh_hcl_report(esapi: ESAPI, user_data: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """The HCL report (NV content), its SNP report and runtime claims, once the claims carry ``user_data``."""
    for attempt in range(1, REPORT_READ_ATTEMPTS + 1):
        blob = _read_nv(esapi, HCL_REPORT_NV_INDEX, "read-hcl-report")
        report, claims = read_hcl_report(blob)
        if claims.user_data == user_data:
            return blob, report.snp_report, claims.to_json()
        log.info("HCL report not yet refreshed with our user data (read %d of %d)", attempt, REPORT_READ_ATTEMPTS)
        if attempt < REPORT_READ_ATTEMPTS:
            time.sleep(REPORT_READ_PAUSE_S)
    raise AzureCvmEvidenceInvalid(
        "read-hcl-report",
        f"after {REPORT_READ_ATTEMPTS} reads the HCL report still carries other user data: the paravisor did not "
        "refresh it from NV 0x01400002",
    )


def _pcr_selection(indexes: tuple[int, ...] | list[int]) -> str:
    return f"{QUOTE_BANK}:{','.join(str(index) for index in indexes)}"


def _quote(esapi: ESAPI, nonce: bytes) -> bytes:
    """TPM2B_ATTEST followed by TPMT_SIGNATURE, as Azure's tools hand a quote on."""
    with _tpm_step("quote"):
        ak = find_entity(esapi, AK_PERSISTENT_HANDLE)
        if ak is None:
            raise AzureCvmEvidenceUnavailable("quote", f"the vTPM has no attestation key at 0x{AK_PERSISTENT_HANDLE:08x}")
        attest, signature = esapi.quote(ak, _pcr_selection(QUOTED_PCRS), nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    return attest.marshal() + signature.marshal()


def _read_pcrs(esapi: ESAPI) -> dict[int, bytes]:
    """The quoted PCRs' values; TPM2_PCR_Read answers a few at a time, so it is asked until all are read."""
    values: dict[int, bytes] = {}
    with _tpm_step("read-pcrs"):
        while remaining := [index for index in QUOTED_PCRS if index not in values]:
            _, selection, digests = esapi.pcr_read(_pcr_selection(remaining))
            chosen = selection.pcrSelections[0] if selection.count == 1 else None
            read = [
                index for index in range(chosen.sizeofSelect * 8) if chosen.pcrSelect[index // 8] >> (index % 8) & 1
            ] if chosen is not None and chosen.hash == TPM2_ALG.SHA256 else []  # fmt: skip
            if not read or len(read) != len(digests):
                raise AzureCvmEvidenceUnavailable("read-pcrs", f"the vTPM read none of PCRs {remaining}")
            values.update((index, bytes(digest)) for index, digest in zip(read, digests, strict=True))
    return values


def _check_quote(quote: bytes, nonce: bytes, pcrs: dict[int, bytes]) -> None:
    """The quote must carry our nonce and the PCR values we hand on (a PCR extended in between fails here)."""
    attest_size = int.from_bytes(quote[:2], "big")
    try:
        attest, _ = TPMS_ATTEST.unmarshal(quote[2 : 2 + attest_size])
    except (TSS2_Exception, ValueError):
        raise AzureCvmEvidenceInvalid("quote", "the vTPM's quote is not a TPMS_ATTEST") from None
    if attest.type != TPM2_ST.ATTEST_QUOTE or bytes(attest.extraData) != nonce:
        raise AzureCvmEvidenceInvalid("quote", "the vTPM's answer is not a quote carrying the nonce it was asked for")
    digest = hashlib.sha256(b"".join(pcrs[index] for index in QUOTED_PCRS)).digest()
    if bytes(attest.attested.quote.pcrDigest) != digest:
        raise AzureCvmEvidenceInvalid("read-pcrs", "the PCR values read are not the ones quoted (a PCR changed)")
