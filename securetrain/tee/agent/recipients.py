"""The final model sealed to each model consumer the job's contract names, inside the TEE.

Training seals the model to the job's KEK (for the registry and later exports). Under a contract, the TEE also
seals it to each recipient key in the contract's ``outputs.recipients`` — keys the parties signed, never a key
that arrives with the job — and uploads each copy beside the model as ``<model blob>.<party>``. The plaintext
exists only in this process, between opening the KEK-sealed model and sealing the copies.
"""

from __future__ import annotations

import io
import logging

from securetrain.core.contracts.job_spec import BlobRef
from securetrain.core.contracts.jobs import RecipientCopy
from securetrain.core.governance.contract import Outputs
from securetrain.core.model_provenance import recipient_key
from securetrain.core.sealed import KekPrivateKey, SealedReader, content_digest, seal
from securetrain.core.storage import BlobStore

log = logging.getLogger(__name__)


def seal_for_recipients(
    sealed_model: bytes, kek: KekPrivateKey, *, run_id: str, output: BlobRef, outputs: Outputs, store: BlobStore
) -> list[RecipientCopy]:
    """Seal the model (``sealed_model``, as training sealed it to ``kek``) to every recipient of ``outputs``."""
    reader = SealedReader(io.BytesIO(sealed_model), kek, expected_context={"run_id": run_id, "kind": "model"},
                          verify_digest=True)  # fmt: skip
    plaintext = reader.read_plaintext()
    source = content_digest(sealed_model)
    copies = []
    for recipient in outputs.recipients:
        key = recipient_key(recipient.public_key.encode())
        out = io.BytesIO()
        context = {"run_id": run_id, "kind": "model-recipient", "party": recipient.party, "source_sha256": source}
        seal(io.BytesIO(plaintext), out, key, context)
        sealed = out.getvalue()
        blob = BlobRef(container=output.container, blob=f"{output.blob}.{recipient.party}")
        store.upload_stream(blob.container, blob.blob, io.BytesIO(sealed), length=len(sealed), overwrite=True)
        copies.append(RecipientCopy(party=recipient.party, blob=blob, sealed_sha256=content_digest(sealed),
                                    recipient_thumbprint=key.thumbprint))  # fmt: skip
        log.info("run %s: the model sealed for %s (key %s…) at %s/%s", run_id, recipient.party, key.thumbprint[:16],
                 blob.container, blob.blob)  # fmt: skip
    return copies
