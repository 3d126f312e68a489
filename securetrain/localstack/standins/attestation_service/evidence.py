"""From an MAA ``/attest/SevSnpVm`` request to verified evidence and its claims, or a refusal naming the check.

The order is that of a relying party that trusts nothing it has not checked:

1. the body parses (JSON, the fields MAA defines and their types: :mod:`.bodies`, canonical base64url, sizes);
2. the report verifies: layout, VCEK → ASK → ARK chain to a root the service trusts, signature
   (:func:`securetrain.core.snp.verifier.verify_report`);
3. REPORT_DATA[0:32] is SHA-256 of the runtime data as sent: the TEE's statement is bound to the chip;
4. the runtime data is a JSON object, and the request's nonce (if any) is the one it states: a nonce
   not covered by the hardware signature would make old evidence look fresh;
5. the report is consistent: no migration agent is bound to a guest whose policy forbids one;

then its claims, in MAA's names (:func:`sev_snp_claims`), go to the attestation policy (:mod:`.appraisal`),
and only then is the nonce spent (:class:`NonceLedger`), so that a refused request spends nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Collection
from typing import Any, TypeVar

from securetrain.core.attestation.claims import sevsnpvm_claims
from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.json_input import JsonInputError, read_json_object
from securetrain.core.snp.certs import CertificateChain, SnpCertificate
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import AttestationReport
from securetrain.core.snp.roots import TrustedRoot
from securetrain.core.snp.verifier import VerifiedReport, verify_report
from securetrain.localstack.standins.attestation_service.bodies import AttestSevSnpVmRequest, SnpReportEvidence
from securetrain.localstack.standins.request_body import BodyInvalid, RequestBody

MAX_BODY_BYTES = 64 << 10
Body = TypeVar("Body", bound=RequestBody)


class EvidenceRefused(SecurityViolation):
    """A request that must not earn a token; ``code`` is the MAA-style error code sent back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _b64url(text: str, field: str) -> bytes:
    try:
        value = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceRefused("InvalidParameter", f"{field} is not valid base64url") from None
    # Only the canonical encoding: otherwise two different strings would carry the same evidence.
    if base64.urlsafe_b64encode(value).rstrip(b"=").decode() != text.rstrip("="):
        raise EvidenceRefused("InvalidParameter", f"{field} is not canonical base64url")
    return value


def _json_object(raw: bytes, field: str) -> dict[str, Any]:
    try:
        return read_json_object(raw, max_bytes=MAX_BODY_BYTES, what=field)
    except JsonInputError as exc:
        raise EvidenceRefused("InvalidParameter", str(exc)) from None


def _parsed(body_type: type[Body], raw: bytes, field: str) -> Body:
    try:
        return body_type.parse(_json_object(raw, field))
    except BodyInvalid as exc:
        raise EvidenceRefused("InvalidParameter", f"{field}: {exc.field}: {exc.reason}") from None


@dataclass(frozen=True)
class SnpEvidence:
    """A parsed ``/attest/SevSnpVm`` request."""

    report: bytes
    vcek_chain_pem: bytes
    runtime_data: bytes
    runtime: dict[str, Any]
    nonce: str | None

    @classmethod
    def from_body(cls, body: bytes) -> SnpEvidence:
        request = _parsed(AttestSevSnpVmRequest, body, "request body")
        if request.draft_policy_for_attestation is not None:
            raise EvidenceRefused("InvalidParameter", "draftPolicyForAttestation is not supported by this service")
        if request.runtime_data.data_type != "JSON":
            # The nonce claim and the TEE's key come from the runtime data, so it must be JSON.
            raise EvidenceRefused("InvalidParameter", 'runtimeData must be {"data": ..., "dataType": "JSON"}')
        evidence = _parsed(SnpReportEvidence, _b64url(request.report, "report"), "report")
        data = _b64url(request.runtime_data.data, "runtimeData.data")
        return cls(
            report=_b64url(evidence.snp_report, "report.SnpReport"),
            vcek_chain_pem=_b64url(evidence.vcek_cert_chain, "report.VcekCertChain"),
            runtime_data=data,
            runtime=_json_object(data, "runtimeData.data"),
            nonce=request.nonce,
        )


def verify_sev_snp(evidence: SnpEvidence, trusted_roots: Collection[TrustedRoot]) -> VerifiedReport:
    """Steps 2-5 above; raises the verifier's specific error, or :class:`EvidenceRefused`."""
    chain = CertificateChain.from_pem_bundle(evidence.vcek_chain_pem)
    verified = verify_report(evidence.report, chain, trusted_roots)
    report = verified.report
    expected = hashlib.sha256(evidence.runtime_data).digest()
    if report.report_data[:32] != expected:
        raise EvidenceRefused(
            "RuntimeDataMismatch",
            f"REPORT_DATA[0:32] is {report.report_data[:32].hex()}, but SHA-256 of the runtime data "
            f"is {expected.hex()}: the runtime data is not the one the TEE attested",
        )
    if evidence.nonce is not None and evidence.runtime.get("nonce") != evidence.nonce:
        raise EvidenceRefused(
            "NonceMismatch",
            f"the request's nonce {evidence.nonce!r} is not the one in the attested runtime data "
            f"({evidence.runtime.get('nonce')!r}): stale evidence",
        )
    if report.migration_agent_bound and not report.policy.migrate_ma:
        # Firmware binds an agent only to a guest whose policy allows one (MIGRATE_MA, which the policy sees
        # as x-ms-sevsnpvm-migration-allowed); a report saying both is not one the policy can judge.
        raise EvidenceRefused(
            "InconsistentReport",
            f"a migration agent is bound (REPORT_ID_MA {report.report_id_ma.hex()}) to a guest whose policy "
            f"0x{report.policy.value:x} forbids migration agents",
        )
    return verified


def sev_snp_claims(report: AttestationReport) -> dict[str, Any]:
    """The incoming claims of a verified report, with MAA's SevSnpVm names and value types (claim sets,
    "SEV-SNP attestation"; the vocabulary is the core's, :func:`securetrain.core.attestation.claims.sevsnpvm_claims`)."""
    return {"x-ms-attestation-type": "sevsnpvm", **sevsnpvm_claims(report)}


def trusted_root(path: Path) -> TrustedRoot:
    """The ARK certificate in ``path`` (PEM or DER) as a root evidence may chain to, named by its subject."""
    try:
        ark = SnpCertificate.load(path.read_bytes(), "ARK")
    except (OSError, SnpEvidenceError) as exc:
        raise ConfigurationError(f"cannot read the root certificate {path}: {exc}") from None
    return TrustedRoot(ark.subject_name, ark.spki_sha256)


class NonceLedger:
    """Nonces already spent on a token, kept (in SQLite, across restarts) as long as such a token lives."""

    def __init__(self, path: Path, *, retention_s: int) -> None:
        self._retention = retention_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS spent (nonce TEXT PRIMARY KEY, at REAL NOT NULL)")

    def spend(self, nonce: str) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM spent WHERE at < ?", (now - self._retention,))
            try:
                self._db.execute("INSERT INTO spent (nonce, at) VALUES (?, ?)", (nonce, now))
            except sqlite3.IntegrityError:
                raise EvidenceRefused("NonceReplayed", f"nonce {nonce!r} was already used: replayed request") from None
