"""Model export inside the TEE: re-seal a registered model for a recipient the data owner approved, audited.

The caller is the pipeline, which is not trusted to choose the recipient, so the TEE decides, spending
nothing (no attestation, no nonce, no key) until the request has passed every check that needs no key: the
request's form (400), the data owner's approval (403), the stored model (404, 424); then it attests, has the
KEK released, checks the approval's expiry against the token's issue time, re-seals, and records the export
in the audit log before the bytes leave (424 if it cannot). The steps in full: docs/models.md ("Secure export").
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, PlainValidator

from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.audit.tee_log import TeeEventKind, TeeEventLog, audit_events
from securetrain.core.contracts.base import Contract, DocumentInvalid, matching, refusal
from securetrain.core.contracts.job_spec import BlobName, ContainerName, KekId, Nonce, RunId
from securetrain.core.errors import SecuretrainError, SecurityViolation
from securetrain.core.governance.in_force import verify_contract
from securetrain.core.governance.store import CONTRACTS_CONTAINER, ContractStore
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
from securetrain.core.storage import BlobStore, StorageError
from securetrain.tee.agent.tee_events import TeeEvents
from securetrain.tee.attest import Attester, TeeKey
from securetrain.tee.data_owners import DataOwnerKeys
from securetrain.tee.release import VaultKeyReleaser

if TYPE_CHECKING:
    from securetrain.tee.agent.metrics import RunnerMetrics

log = logging.getLogger(__name__)

MAX_EXPORT_REQUEST_BYTES = 1 << 20
Sha256 = matching(r"[0-9a-f]{64}", "The registered model's SHA-256, 64 lowercase hex digits.")


class ExportRequestInvalid(DocumentInvalid):
    """The export request is malformed; ``field`` names what is wrong."""

    document = "export request"


class ExportRejected(SecurityViolation):
    """The model to export is not the one asked for: another digest, or not sealed as that run's model."""


class ExportNotAudited(SecurityViolation):
    """The TEE could not record the export in the audit log, so it refused it."""


def _recipient(pem: Any) -> KekPublicKey:
    if not isinstance(pem, str) or not pem.startswith("-----BEGIN PUBLIC KEY-----"):
        raise refusal("must be the recipient's RSA public key, PEM")
    try:
        return recipient_key(pem.encode())
    except RecipientKeyInvalid as exc:
        raise refusal(str(exc)) from None


def _approval(document: Any) -> ExportApproval:
    try:
        return ExportApproval.parse(document)
    except ExportApprovalInvalid as exc:
        raise refusal(str(exc)) from None


class ExportRequest(Contract):
    """``POST /v1/exports``'s body: re-seal the sealed model at ``container/blob`` (SHA-256 ``sealed_sha256``,
    trained by ``run_id`` under ``kek_id``) for the recipient's RSA public key, as ``approval`` allows;
    ``nonce`` is fresh for this export."""

    kek_id: KekId
    run_id: RunId
    container: ContainerName
    blob: BlobName
    sealed_sha256: Sha256
    recipient: Annotated[KekPublicKey, PlainValidator(_recipient), Field(alias="recipient_public_key")]
    nonce: Nonce
    approval: Annotated[ExportApproval, PlainValidator(_approval)]

    invalid = ExportRequestInvalid


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


def _contract_allows(request: ExportRequest, digest: str, store: BlobStore) -> None:
    """A model trained under a contract leaves only as the contract says: exports allowed, to a recipient key it
    names, while it is in force; ExportNotApproved otherwise (also when the contract cannot be checked)."""
    contracts = ContractStore(store, CONTRACTS_CONTAINER)
    try:
        verified = verify_contract(contracts.read(digest), contracts.revocations(digest), datetime.datetime.now(datetime.UTC))
    except (SecurityViolation, StorageError) as exc:
        raise ExportNotApproved(f"the model was trained under contract {digest}, which is not in force or cannot be "
                                f"read: {exc}") from None  # fmt: skip
    outputs = verified.contract.outputs
    if not outputs.export_allowed:
        raise ExportNotApproved(f"contract {digest} does not allow exports of the model (outputs.export_allowed)")
    if request.recipient.thumbprint not in {recipient_key(r.public_key.encode()).thumbprint for r in outputs.recipients}:
        raise ExportNotApproved(f"the recipient key {request.recipient.thumbprint[:16]}… is not one contract {digest} "
                                "names (outputs.recipients)")  # fmt: skip


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
    tee_key: TeeKey,
    attester: Attester,
    releaser: VaultKeyReleaser,
    store: BlobStore,
    owners: DataOwnerKeys,
    metrics: RunnerMetrics,
) -> bytes:
    """The model re-sealed for the approved recipient (see the module documentation for the steps), attested
    with ``tee_key``, the export's own fresh key."""
    owner = _approved_by(request, owners, datetime.datetime.now(datetime.UTC))
    sealed = _stored_model(request, store)
    # The seal context is authenticated: a model trained under a contract says so, whatever the request says.
    contract = read_header(io.BytesIO(sealed)).content.context.get("contract")
    if contract is not None:
        _contract_allows(request, contract, store)

    events = TeeEvents(TeeEventLog(f"export-{secrets.token_hex(8)}", request.run_id), tee_key)
    # Under a contract the KEK is released only to a TEE enforcing it (docs/governance.md).
    token = attester.attest(tee_key, request.nonce, contract=contract)
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
    plaintext = reader.read_plaintext()
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
