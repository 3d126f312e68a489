"""Model export: the data owner's approval (which recipient key may receive models sealed under which KEK),
and the audit log where the TEE records every export.

A model leaves the TEE only sealed, and only the TEE re-seals it for someone else (``POST /v1/exports``), for
a recipient the data owner approved in a signed export approval (:mod:`securetrain.core.signed_documents`).
The approval's form, why it names the KEK version exactly, and how the TEE records each export in
:data:`EXPORT_AUDIT_LOG` are in docs/models.md ("Secure export").
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core import signed_documents
from securetrain.core.audit.errors import AuditEventInvalid
from securetrain.core.audit.events import check_time, rfc3339_utc
from securetrain.core.errors import ConfigurationError, SecurityViolation

SCHEMA = "securetrain.export-approval/v1"
#: The audit log (in the audit container) where the TEE records every export.
EXPORT_AUDIT_LOG = "model-exports"
_FIELDS = {"schema", "kek_id", "recipient_thumbprint", "expires_at", "signatures"}
_THUMBPRINT = re.compile(r"[0-9a-f]{64}")


class ExportApprovalInvalid(ConfigurationError):
    """The export approval is not a well-formed approval document (a bad request, not a refusal)."""


class ExportNotApproved(SecurityViolation):
    """The data owner did not approve this export: no valid owner signature, another recipient or KEK, or expired."""


@dataclass(frozen=True)
class ExportApproval:
    """A parsed approval; its owner signature is checked by whoever holds the pinned owner keys (the TEE)."""

    kek_id: str
    recipient_thumbprint: str
    expires_at: datetime.datetime
    document: Mapping[str, Any]

    @classmethod
    def parse(cls, document: object) -> ExportApproval:
        """Check the approval's form.

        Raises:
            ExportApprovalInvalid: naming what is malformed.
        """
        if not isinstance(document, Mapping) or set(document) != _FIELDS:
            raise ExportApprovalInvalid(f"an export approval is a JSON object with exactly {sorted(_FIELDS)}")
        if document["schema"] != SCHEMA:
            raise ExportApprovalInvalid(f"the approval's schema is {document['schema']!r}, not {SCHEMA}")
        kek_id, thumbprint, expires = document["kek_id"], document["recipient_thumbprint"], document["expires_at"]
        if not isinstance(kek_id, str) or not kek_id.startswith("https://"):
            # Compared for equality with the request's kek_id, which the TEE validated as a versioned key URL.
            raise ExportApprovalInvalid("the approval's kek_id is not a Key Vault key URL")
        if not isinstance(thumbprint, str) or not _THUMBPRINT.fullmatch(thumbprint):
            raise ExportApprovalInvalid("the approval's recipient_thumbprint is not 64 lowercase hex digits")
        try:
            check_time(expires)
        except AuditEventInvalid as exc:
            raise ExportApprovalInvalid(f"the approval's expires_at: {exc}") from None
        moment = datetime.datetime.fromisoformat(expires.replace("Z", "+00:00"))
        return cls(kek_id, thumbprint, moment, dict(document))

    def authorize(self, *, kek_id: str, recipient_thumbprint: str, at: datetime.datetime) -> None:
        """Check that this approval covers an export under ``kek_id`` to ``recipient_thumbprint`` at time ``at``.

        Raises:
            ExportNotApproved: naming which term it does not meet.
        """
        if recipient_thumbprint != self.recipient_thumbprint:
            raise ExportNotApproved(
                f"the export approval is for recipient key {self.recipient_thumbprint[:16]}…, not "
                f"{recipient_thumbprint[:16]}…"
            )
        if kek_id != self.kek_id:
            raise ExportNotApproved(f"the export approval covers models under KEK {self.kek_id}, not {kek_id}")
        if at >= self.expires_at:
            raise ExportNotApproved(f"the export approval expired at {rfc3339_utc(self.expires_at)}")


def approve_export(
    key: Ed25519PrivateKey, *, kek_id: str, recipient_thumbprint: str, expires_at: datetime.datetime
) -> dict[str, Any]:
    """The data owner's signed approval of exports under ``kek_id`` to ``recipient_thumbprint`` until ``expires_at``."""
    document = {
        "schema": SCHEMA,
        "kek_id": kek_id,
        "recipient_thumbprint": recipient_thumbprint,
        "expires_at": rfc3339_utc(expires_at),
    }
    ExportApproval.parse({**document, "signatures": []})  # the owner signs only what the TEE would accept
    return signed_documents.sign(key, document)
