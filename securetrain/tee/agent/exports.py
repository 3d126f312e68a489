"""Model export inside the TEE: re-seal a registered model for a recipient the data owner approved, audited.

``POST /v1/exports`` asks the TEE to open a registered model (sealed under a KEK only the TEE obtains)
and re-seal it for a recipient's RSA key. The caller is the pipeline, which is not trusted to choose the
recipient, so the TEE decides, in this order, spending nothing (no attestation, no nonce, no key) until
the request has passed every check that needs no key:

1. the request is well formed (400 naming the field);
2. it carries an export approval signed by a data owner whose key is pinned in this TEE's configuration,
   naming this recipient key's thumbprint and this KEK, not expired (403 otherwise);
3. the stored model exists (404), has the registered digest and is sealed as this run's model (424);
4. the TEE attests a fresh key with the caller's nonce and has the KEK released to it; the approval's
   expiry is checked once more against the token's issue time (the attestation service's clock, not the
   host's), then the model is opened and re-sealed for the recipient;
5. the TEE records the export, before the bytes leave, as a TEE event log of its own (attestation, key
   release, the export with its approval) signed with the attested key, in the audit log
   :data:`~securetrain.core.model_export.EXPORT_AUDIT_LOG`. If it cannot, the export is refused (424).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.audit.tee_log import TeeEventKind, TeeEventLog, audit_events
from securetrain.core.contracts.job_spec import BLOB_NAME, CONTAINER, KEK_ID, NONCE, RUN_ID
from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.json_input import JsonInputError, read_json_object
from securetrain.core.model_export import (
    EXPORT_AUDIT_LOG,
    ExportApproval,
    ExportApprovalInvalid,
    ExportNotApproved,
)
from securetrain.core.model_provenance import RecipientKeyInvalid, recipient_key
from securetrain.core.model_registry import verify_sealed_model
from securetrain.core.sealed import KekPublicKey, SealedReader, content_digest, seal
from securetrain.core.sealed.errors import SealedFileError
from securetrain.core.sealed.header import read_header
from securetrain.core.signed_documents import SignatureInvalid
from securetrain.core.storage import BlobStore
from securetrain.tee.agent.tee_events import TeeEvents
from securetrain.tee.attest import Attester, TeeKey
from securetrain.tee.data_owners import DataOwnerKeys

if TYPE_CHECKING:
    from securetrain.tee.agent.jobs import KeyReleaser
    from securetrain.tee.agent.metrics import RunnerMetrics

log = logging.getLogger(__name__)

MAX_EXPORT_REQUEST_BYTES = 1 << 20

# Each string field: the pattern it must match as a whole (the job spec's, where the job spec has the same
# field) and what it is, for the error message.
_STRING_FIELDS: dict[str, tuple[str, str]] = {
    "kek_id": (KEK_ID, "a versioned Key Vault key URL, https://VAULT/keys/NAME/VERSION"),
    "run_id": (RUN_ID, "the id of the run that trained the model"),
    "container": (CONTAINER, "a storage container name"),
    "blob": (BLOB_NAME, "a blob name"),
    "sealed_sha256": (r"[0-9a-f]{64}", "the registered model's SHA-256, 64 lowercase hex digits"),
    "nonce": (NONCE, "22-200 characters of base64url (at least 128 bits), fresh"),
    "recipient_public_key": (r"(?s)-----BEGIN PUBLIC KEY-----.*", "the recipient's RSA public key, PEM"),
}
_FIELDS = {*_STRING_FIELDS, "approval"}


class ExportRequestInvalid(ConfigurationError):
    """The export request is malformed; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"export request field {field!r}: {reason}")
        self.field = field


class ExportRejected(SecurityViolation):
    """The model to export is not the one asked for: another digest, or not sealed as that run's model."""


class ExportNotAudited(SecurityViolation):
    """The TEE could not record the export in the audit log, so it refused it."""


@dataclass(frozen=True)
class ExportRequest:
    """Re-seal the sealed model at ``container/blob`` (SHA-256 ``sealed_sha256``, trained by ``run_id`` under
    ``kek_id``) for ``recipient``'s RSA public key, as ``approval`` allows; ``nonce`` is fresh for this export."""

    kek_id: str
    run_id: str
    container: str
    blob: str
    sealed_sha256: str
    recipient: KekPublicKey
    nonce: str
    approval: ExportApproval


def parse_export_request(body: bytes) -> ExportRequest:
    """``POST /v1/exports``'s body: a JSON object of exactly these fields, each checked.

    Raises:
        ExportRequestInvalid: naming the first field that is missing, unknown or malformed.
    """
    try:
        document = read_json_object(body, max_bytes=MAX_EXPORT_REQUEST_BYTES, what="the export request")
    except JsonInputError as exc:
        raise ExportRequestInvalid(exc.field or "(body)", exc.reason) from None
    if unknown := sorted(set(document) - _FIELDS):
        raise ExportRequestInvalid(unknown[0], f"unknown field; an export request has exactly {sorted(_FIELDS)}")
    if missing := sorted(_FIELDS - set(document)):
        raise ExportRequestInvalid(missing[0], "required field is missing")
    for name, (pattern, what) in _STRING_FIELDS.items():
        value = document[name]
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise ExportRequestInvalid(name, f"must be {what}")
    try:
        recipient = recipient_key(document["recipient_public_key"].encode())
    except RecipientKeyInvalid as exc:
        raise ExportRequestInvalid("recipient_public_key", str(exc)) from None
    try:
        approval = ExportApproval.parse(document["approval"])
    except ExportApprovalInvalid as exc:
        raise ExportRequestInvalid("approval", str(exc)) from None
    return ExportRequest(
        kek_id=document["kek_id"], run_id=document["run_id"], container=document["container"],
        blob=document["blob"], sealed_sha256=document["sealed_sha256"], recipient=recipient,
        nonce=document["nonce"], approval=approval,
    )  # fmt: skip


def _approved_by(request: ExportRequest, owners: DataOwnerKeys, at: datetime.datetime) -> str:
    """The key id of the pinned data owner whose approval covers this export now; ExportNotApproved otherwise."""
    try:
        signer = owners.verify(request.approval.document, what="the export approval")
    except SignatureInvalid as exc:
        raise ExportNotApproved(str(exc)) from None
    request.approval.authorize(kek_id=request.kek_id, recipient_thumbprint=request.recipient.thumbprint, at=at)
    return signer


def _stored_model(request: ExportRequest, store: BlobStore) -> bytes:
    """The sealed model as stored, checked without a key: the registered digest, this run's model, this KEK.

    Raises:
        BlobNotFound, ContainerNotFound: there is no such model.
        ExportRejected: it is not the model the request names.
    """
    with store.open_read(request.container, request.blob) as src:
        sealed = src.read()
    try:
        digest = content_digest(sealed)
        header = read_header(io.BytesIO(sealed))
    except SealedFileError as exc:
        raise ExportRejected(f"{request.container}/{request.blob} is not a sealed model: {exc}") from None
    if digest != request.sealed_sha256:
        raise ExportRejected(
            f"{request.container}/{request.blob} has SHA-256 {digest}, not the registered {request.sealed_sha256}"
        )
    try:
        verify_sealed_model(header, kek_id=request.kek_id, run_id=request.run_id)
    except SecurityViolation as exc:
        raise ExportRejected(str(exc)) from None
    return sealed


def _record(store: BlobStore, events: TeeEvents) -> None:
    """Append the export's TEE log to the export audit log; ExportNotAudited if that fails."""
    try:
        store.ensure_container(AUDIT_CONTAINER)
        audit_log = AuditLog(BlobAuditStore(store.container_client(AUDIT_CONTAINER), EXPORT_AUDIT_LOG))
        for event in audit_events(events.to_json()):
            audit_log.record(event)
    except SecuretrainError as exc:
        raise ExportNotAudited(
            f"the export could not be recorded in audit log {EXPORT_AUDIT_LOG}, so the TEE refused it: {exc}"
        ) from None


def export_model(
    request: ExportRequest,
    *,
    attester: Attester,
    releaser: KeyReleaser,
    store: BlobStore,
    owners: DataOwnerKeys,
    metrics: RunnerMetrics,
) -> bytes:
    """The model re-sealed for the approved recipient (see the module documentation for the steps)."""
    owner = _approved_by(request, owners, datetime.datetime.now(datetime.UTC))
    sealed = _stored_model(request, store)

    tee_key = TeeKey()
    events = TeeEvents(TeeEventLog(f"export-{secrets.token_hex(8)}", request.run_id), tee_key)
    token = attester.attest(tee_key, request.nonce)
    metrics.attestations.inc()
    events.attested(token, 0)
    _approved_by(request, owners, datetime.datetime.fromtimestamp(int(token.claims["iat"]), datetime.UTC))
    keys = releaser.release(request.kek_id, token, tee_key)
    metrics.key_releases.inc()
    events.record(TeeEventKind.KEY_RELEASED, {"kek_id": request.kek_id})

    reader = SealedReader(
        io.BytesIO(sealed), keys.kek_private, expected_context={"run_id": request.run_id, "kind": "model"},
        verify_digest=True,
    )  # fmt: skip
    plaintext = b"".join(bytes(segment) for segment in reader.segments())
    context = {"run_id": request.run_id, "kind": "model-export", "source_sha256": request.sealed_sha256}
    out = io.BytesIO()
    seal(io.BytesIO(plaintext), out, request.recipient, context)
    exported = out.getvalue()
    details: Mapping[str, Any] = {
        "source": {"blob": f"{request.container}/{request.blob}", "sealed_sha256": request.sealed_sha256,
                   "run_id": request.run_id, "kek_id": request.kek_id},
        "recipient_thumbprint": request.recipient.thumbprint,
        "export_sha256": hashlib.sha256(exported).hexdigest(),
        "approved_by": owner,
        "approval": dict(request.approval.document),
    }  # fmt: skip
    events.record(TeeEventKind.MODEL_EXPORTED, details)
    _record(store, events)
    log.info("exported the model of run %s (sha256 %s) for recipient key %s…, approved by owner %s…",
             request.run_id, request.sealed_sha256, request.recipient.thumbprint[:16], owner[:16])  # fmt: skip
    return exported
