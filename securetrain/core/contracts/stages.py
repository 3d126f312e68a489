"""What each stage of the training workflow returns to Airflow (its XCom ``return_value``).

Airflow stores XComs as JSON: a stage returns ``Result(...).model_dump(mode="json")``, and whatever reads
it (a later stage, the audit, the "Secure training" page) validates it back with ``Result.model_validate``.
None of them holds a secret: claims, digests, blob names, metrics (docs/airflow.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, RootModel

from securetrain.core.contracts.base import Contract, Items, JsonObject, Lax, Omittable
from securetrain.core.contracts.job_spec import BlobRef, DatasetRef
from securetrain.core.contracts.jobs import EpochRecord, JobState, KeyRelease, Provenance, RecipientCopy, Transition
from securetrain.core.contracts.training import PrivacySpent


class RunContract(Contract):
    """The signed contract a run is under, as ``prepare_environment`` verified it: every party signed, in force."""

    digest: str
    contract_id: str
    purpose: str
    #: Every party, in the contract's order: each signed ``digest``.
    signers: Items[str]
    #: Each contracted dataset's KEK: the latest version, checked to be released only under the contract's policy.
    kek_ids: dict[str, str]


class EnvironmentResult(Contract):
    """``prepare_environment``: the KEK under the approved release policy, and the confidential VM up."""

    kek_id: str
    release_policy_sha256: str
    cvm_endpoint: str
    #: The TEE type the agent reported; the health sensor expects it throughout the run.
    tee: str
    containers: Items[str]
    #: The contract the run is under; absent for a run without one (its KEK is then the deployment's).
    contract: Omittable[RunContract]


class CheckedShard(Contract):
    """A sealed shard of the dataset, as its header and the owner's manifest describe it (nothing decrypted)."""

    container: str
    blob: str
    format: str
    context: dict[str, str]
    kek_id: str
    plaintext_sha256: str
    size: int


class CheckedManifest(Contract):
    """A dataset version checked under a contract: its manifest and the SHA-256 the contract pins for it."""

    dataset_id: str
    version: str
    manifest_blob: str
    manifest_sha256: str


class DataCheckResult(Contract):
    """``check_data_security``: the dataset version checked, the manifest the job names, and its shards.

    Under a contract, every contracted dataset is checked: ``manifests`` lists them, ``dataset_id``, ``version``
    and ``manifest_blob`` name the first, ``job_datasets`` and ``datasets`` hold all of them."""

    dataset_id: str
    version: str
    manifest_blob: str
    job_datasets: Items[DatasetRef]
    datasets: Items[CheckedShard]
    manifests: Omittable[Items[CheckedManifest]]

    def shard_digests(self) -> list[dict[str, str]]:
        """Each shard's blob path and plaintext digest: what the audit log and a model's lineage record."""
        return [{"blob": f"{d.container}/{d.blob}", "plaintext_sha256": d.plaintext_sha256} for d in self.datasets]


class AttestationResult(RootModel[dict[str, Any]]):
    """``attestation_status``: the claims of the TEE's token for Airflow's nonce, validated by Airflow."""

    model_config = ConfigDict(frozen=True, strict=True)


class TrainingStageResult(Contract):
    """``train``: the job, the claims of the attestation it ran under (validated by Airflow), its key
    release, curve, validation aggregates, the sealed model and checkpoints, and the model's provenance."""

    job_id: str
    run_id: str
    state: Lax[JobState]
    attestation: JsonObject
    key_release: KeyRelease | None
    epochs: int
    metrics: dict[str, float]
    history: Items[EpochRecord]
    validation: JsonObject | None
    model: BlobRef
    #: ``container/blob`` of the sealed model.
    model_blob: str
    #: ``container/blob`` of each sealed checkpoint.
    checkpoints: Items[str]
    device: str
    tee_type: str
    transitions: Items[Transition]
    #: The TEE's signed statement about the model and the token that names its key (docs/models.md).
    provenance: Provenance | None
    #: What a DP-SGD run spent (the accountant's ε, δ); absent without differential privacy.
    privacy: Omittable[PrivacySpent]
    #: Under a contract: the model sealed to each consumer's key the contract names.
    recipients: Omittable[Items[RecipientCopy]]


class RegistrationResult(Contract):
    """``register_model``: the model version registered, its manifest, and the sealed model's digest."""

    name: str
    version: int
    manifest_blob: str
    sealed_sha256: str


class AuditResult(Contract):
    """``audit``: whether the run's audit log verifies, where it and the reports are."""

    verdict: Literal["verified", "broken"]
    entries: int | None
    head: str | None
    #: The first entry that does not verify (a broken log).
    first_bad: int | None
    summary: str
    log: str
    report_blob: str
    run_report: str


class CleanupResult(Contract):
    """``cleanup``: whether it cancelled the run's job, how many temporary blobs it deleted, the CVM's fate."""

    job_cancelled: bool
    deleted_blobs: int
    cvm: str
