"""Stage 4, model management: the sealed model verified and registered as a new version with its lineage."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from securetrain.airflow.failures import fail_closed
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.airflow.settings import PipelineSettings
from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.contracts.jobs import RecipientCopy
from securetrain.core.contracts.stages import DataCheckResult, EnvironmentResult, RegistrationResult, TrainingStageResult
from securetrain.core.model_registry import ModelRegistry, ModelRejected
from securetrain.core.sealed.envelope import content_digest
from securetrain.core.storage import BlobStore


def keep_recipient_copies(
    store: BlobStore, registry: ModelRegistry, name: str, copies: Sequence[RecipientCopy], statement: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Copy each consumer's sealed copy of the model into the registry (cleanup deletes the run's outputs), once
    its digest is the one the TEE's signed model statement names for that consumer; what the lineage records."""
    signed = {entry.get("party"): entry for entry in (statement.get("governance") or {}).get("recipients") or ()}
    kept = []
    store.ensure_container(registry.container)
    for copy in copies:
        sealed = b"".join(store.download_chunks(copy.blob.container, copy.blob.blob))
        digest = content_digest(sealed)
        named = (signed.get(copy.party) or {}).get("sealed_sha256")
        if not digest == copy.sealed_sha256 == named:
            raise ModelRejected(
                f"the model sealed for {copy.party} ({copy.blob.container}/{copy.blob.blob}) hashes to {digest}; the "
                f"training result says {copy.sealed_sha256} and the TEE's statement {named}"
            )
        blob = f"{name}/recipients/{copy.party}/{digest}.sealed"
        store.upload_stream(registry.container, blob, io.BytesIO(sealed), length=len(sealed), overwrite=True)
        kept.append({"party": copy.party, "blob": f"{registry.container}/{blob}", "sealed_sha256": digest,
                     "recipient_thumbprint": copy.recipient_thumbprint})  # fmt: skip
    return kept

class ModelManagementOperator(BaseOperator):
    """Registers the run's sealed model as the next version of ``model_name``.

    The model is checked without decrypting it (its sealed header must name the run's KEK, the run and the
    kind "model"; its length must match) and copied into the registry; the version's manifest records the
    lineage: the datasets and their plaintext digests, the release-policy hash, the attestation claims of
    the TEE that trained it, hyperparameters and metrics. It also carries the job's provenance (the model
    statement the TEE signed with its attested key, the signature, the attestation token) and is signed
    with the pipeline's model-signing key; ``securetrain models verify`` checks the whole chain.

    Under a contract the lineage also records the contract (digest, id, signers), each dataset's manifest and its
    pinned digest, the privacy the run spent (ε, δ, accountant), and each consumer's copy of the model, kept in the
    registry beside it (checked against the TEE's statement first: the run's outputs are deleted by cleanup).

    ``training``, ``data`` and ``environment`` are the XComs of the training, data-check and preparation
    stages (:mod:`securetrain.core.contracts.stages`, validated here). Returns (XCom) a
    :class:`~securetrain.core.contracts.stages.RegistrationResult`.
    """

    template_fields: Sequence[str] = ("model_name", "training", "data", "environment", "hyperparameters")
    ui_color = "#eadcf4"

    def __init__(
        self,
        *,
        model_name: str,
        training: Mapping[str, Any],
        data: Mapping[str, Any],
        environment: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
        storage_conn_id: str = SecureStorageHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.training = training
        self.data = data
        self.environment = environment
        self.hyperparameters = hyperparameters
        self.storage_conn_id = storage_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        training = TrainingStageResult.model_validate(self.training)
        data = DataCheckResult.model_validate(self.data)
        environment = EnvironmentResult.model_validate(self.environment)
        trained = training.model_dump(mode="json")
        lineage = {
            "dag_run": {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]},
            "job_id": training.job_id,
            "dataset": {"id": data.dataset_id, "version": data.version, "manifest": data.manifest_blob,
                        "shards": data.shard_digests()},
            "release_policy_sha256": environment.release_policy_sha256,
            "attestation": trained["attestation"],
            "key_release": trained["key_release"],
            "history": trained["history"],
            "tee_type": training.tee_type,
            "device": training.device,
            "hyperparameters": dict(self.hyperparameters),
            "metrics": trained["metrics"],
            "validation": trained["validation"],
        }  # fmt: skip
        if environment.contract is not None:
            contract = environment.contract
            lineage["contract"] = {"digest": contract.digest, "contract_id": contract.contract_id,
                                   "signers": list(contract.signers)}  # fmt: skip
            lineage["datasets"] = [manifest.model_dump(mode="json") for manifest in data.manifests or ()]
        if training.privacy is not None:
            lineage["privacy"] = training.privacy.model_dump(mode="json")
        provenance = training.provenance
        with fail_closed("model management"), SecureStorageHook(self.storage_conn_id).blob_store() as store:
            # Inside fail_closed like every other refusal: a retry cannot bring provenance back.
            if not provenance:
                raise ModelRejected(
                    "the training stage's result carries no provenance (the TEE-signed model statement and the "
                    "attestation token): a model without it cannot be registered"
                )
            registry = ModelRegistry(store)
            if training.recipients:
                lineage["recipients"] = keep_recipient_copies(store, registry, self.model_name, training.recipients,
                                                              provenance.statement)  # fmt: skip
            version = registry.register(
                self.model_name, source_container=training.model.container, source_blob=training.model.blob,
                kek_id=environment.kek_id, run_id=training.run_id, lineage=lineage,
                provenance=provenance.model_dump(mode="json"),
                signing_key=load_or_create_signing_key(PipelineSettings.load().required("model_signing_key")),
            )  # fmt: skip
        sealed = version.manifest["sealed_model"]
        self.log.info("registered %s version %d: sealed model sha256 %s, trained in %s under policy %s",
                      version.name, version.version, sealed["sha256"], training.tee_type,
                      environment.release_policy_sha256)  # fmt: skip
        return RegistrationResult(
            name=version.name, version=version.version, manifest_blob=f"{version.container}/{version.manifest_blob}",
            sealed_sha256=sealed["sha256"],
        ).model_dump(mode="json")  # fmt: skip
