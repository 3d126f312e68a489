"""Evidence on Azure Container Instances (confidential SKU): the utility VM's SEV-SNP report, endorsed by Microsoft.

A confidential container group runs in a utility VM (UVM) that Microsoft builds. What the container sees:

- the UVM's SEV-SNP guest device. Microsoft's own guest tooling (microsoft/confidential-sidecar-containers,
  ``pkg/attest``) asks it through the ``/dev/sev`` (Linux 5.x) or ``/dev/sev-guest`` (6.x) ioctl; nothing there
  uses configfs-tsm, and ACI does not document it for its UVM. This provider takes the report from a
  *report source* with :class:`~securetrain.tee.evidence.configfs_tsm.ConfigfsTsmProvider`'s
  ``attestation_report(report_data) -> bytes`` (the report alone: on ACI the certificates come from the
  security context, not from the host's certificate table), which is that provider wherever the UVM's kernel
  offers configfs-tsm;
- the *security context directory*, named by ``UVM_SECURITY_CONTEXT_DIR`` (ACI sets it; the sidecar's
  ``pkg/common/info.go`` reads the same three files, written by hcsshim):

  ``host-amd-cert-base64``     base64 of the JSON Azure's THIM service gives for the host:
                               ``{"vcekCert": PEM, "certificateChain": PEM ASK then ARK, "tcbm": ..., ...}``
  ``reference-info-base64``    base64 of the UVM endorsement (COSE_Sign1 signed by Microsoft)
  ``security-policy-base64``   base64 of the CCE policy (Rego) the UVM enforces; HOST_DATA is its SHA-256

The files are read once, when the provider is made, and strictly: canonical base64 (one trailing newline
allowed), bounded sizes, each through the core's reader (:class:`~securetrain.core.snp.certs.CertificateChain`,
:class:`~securetrain.core.aci.uvm_endorsement.UvmEndorsement`, :class:`~securetrain.core.aci.cce_policy.CcePolicy`).
A missing file is :class:`EvidenceUnavailable`, a malformed one :class:`EvidenceError`; both name the file.
Of THIM's JSON only the two certificate fields are read: the others are cache metadata for whoever fetches it.

Each report is checked before it leaves: its HOST_DATA must be the SHA-256 of the policy in the security
context (else the files are not this UVM's). The result is an :class:`Evidence` with ``uvm_endorsement``: what
MAA's ``/attest/SevSnpVm`` takes with ``Endorsements`` (:func:`securetrain.core.attestation.maa.sev_snp_request`).
Verifying the endorsement is the attestation service's work (:mod:`securetrain.core.aci.verifier`).
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from collections.abc import Callable
from typing import Protocol, TypeVar

from securetrain.core.aci.cce_policy import CcePolicy
from securetrain.core.aci.errors import AciEvidenceError
from securetrain.core.aci.uvm_endorsement import UvmEndorsement
from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import AttestationReport
from securetrain.tee.evidence.base import Evidence, EvidenceError, EvidenceUnavailable, check_report_data

HOST_AMD_CERT = "host-amd-cert-base64"
REFERENCE_INFO = "reference-info-base64"
SECURITY_POLICY = "security-policy-base64"
#: Each file is a few KiB (certificates, endorsement) to a few hundred KiB (a large policy) of base64.
MAX_CONTEXT_FILE_BYTES = 2 << 20
T = TypeVar("T")


class ReportSource(Protocol):
    """Where the UVM's SEV-SNP report comes from (:meth:`ConfigfsTsmProvider.attestation_report`)."""

    def attestation_report(self, report_data: bytes) -> bytes:
        """A fresh report carrying ``report_data`` (64 bytes)."""
        ...


class AzureAciProvider:
    """SEV-SNP evidence of an ACI confidential container group: report, VCEK chain and UVM endorsement."""

    tee_type = "azure-aci"

    def __init__(self, report_source: ReportSource, security_context_dir: Path) -> None:
        if not security_context_dir.is_dir():
            raise EvidenceUnavailable(
                f"{security_context_dir} is no directory: this is not an ACI confidential container group "
                "(ACI names its security context in UVM_SECURITY_CONTEXT_DIR)"
            )
        self._source = report_source
        self._dir = security_context_dir
        self.vcek_chain = self._read(HOST_AMD_CERT, _thim_chain)
        self.uvm_endorsement = self._read(REFERENCE_INFO, _endorsement)
        self.cce_policy = self._read(SECURITY_POLICY, CcePolicy)
        self._vcek_chain_pem = self.vcek_chain.to_pem_bundle()

    def report(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        report = self._source.attestation_report(report_data)
        try:
            host_data = AttestationReport.from_bytes(report).host_data
        except SnpEvidenceError as exc:
            raise EvidenceError(f"the UVM's report is not an SEV-SNP report: {exc}") from None
        if host_data != self.cce_policy.sha256:
            raise EvidenceError(
                f"the report's HOST_DATA is {host_data.hex()}, but {self._dir / SECURITY_POLICY} holds a policy "
                f"whose SHA-256 is {self.cce_policy.sha256.hex()}: the security context is not this UVM's"
            )
        return Evidence(report, self._vcek_chain_pem, self.uvm_endorsement)

    def _read(self, name: str, parse: Callable[[bytes], T]) -> T:
        path = self._dir / name
        try:
            with path.open("rb") as file:
                data = file.read(MAX_CONTEXT_FILE_BYTES + 1)
        except FileNotFoundError:
            raise EvidenceUnavailable(f"{path} does not exist: the security context lacks {name}") from None
        except OSError as exc:
            raise EvidenceUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_CONTEXT_FILE_BYTES:
            raise EvidenceError(f"{path} is over {MAX_CONTEXT_FILE_BYTES} bytes")
        data = data.removesuffix(b"\n")
        try:
            return parse(_canonical_base64(data))
        except (ValueError, AciEvidenceError, SnpEvidenceError) as exc:
            raise EvidenceError(f"{path}: {exc}") from None


def _canonical_base64(data: bytes) -> bytes:
    try:
        value = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if not value or base64.b64encode(value) != data:
        raise ValueError("is not canonical, non-empty base64")
    return value


def _thim_chain(data: bytes) -> CertificateChain:
    """The VCEK, ASK and ARK from THIM's JSON (``vcekCert``, then ``certificateChain``: ASK and ARK)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("does not hold THIM's JSON") from None
    if not isinstance(document, dict):
        raise ValueError("THIM's JSON must be an object")
    vcek, rest = document.get("vcekCert"), document.get("certificateChain")
    if not isinstance(vcek, str) or not isinstance(rest, str):
        raise ValueError("THIM's JSON must hold 'vcekCert' and 'certificateChain' as PEM text")
    return CertificateChain.from_pem_bundle((vcek + rest).encode())


def _endorsement(data: bytes) -> bytes:
    UvmEndorsement.decode(data)  # refuses what is no well-formed COSE_Sign1 endorsement
    return data
