"""Stage 2, data security check: the sealed dataset verified without decrypting it."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from azure.keyvault.keys import KeyVaultKeyIdentifier

from airflow.sdk import BaseOperator, Context
from securetrain.airflow.failures import fail_closed
from securetrain.airflow.hooks.keyvault import KeyVaultHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.airflow.locations import DATASETS_CONTAINER
from securetrain.core.errors import SecurityViolation
from securetrain.core.contracts.job_spec import DatasetRef
from securetrain.core.contracts.stages import CheckedManifest, CheckedShard, DataCheckResult, RunContract
from securetrain.core.onboarding import DatasetManifest, SealedShard
from securetrain.core.sealed import KekPublicKey
from securetrain.core.sealed.errors import SealedFileError
from securetrain.core.sealed.header import read_header
from securetrain.core.storage import BlobStore

#: ``version`` that means the newest sealed version (scheduled retraining).
LATEST = "latest"
_HEADER_BYTES = 64 * 1024  # a sealed header is a few hundred bytes; its context is small


def _versionless(kek_id: str) -> str:
    """The key a versioned KEK id names, whatever the version: ``<vault>/keys/<name>``."""
    ref = KeyVaultKeyIdentifier(kek_id)
    return f"{ref.vault_url.rstrip('/')}/keys/{ref.name}"


class DatasetCheckFailed(SecurityViolation):
    """A sealed shard or its manifest is not what the pipeline approved."""


def check_shard(store: BlobStore, shard: SealedShard, kek: KekPublicKey) -> None:
    """One shard against its manifest entry and the KEK, reading only its header and properties."""
    where = f"{shard.container}/{shard.blob}"
    store.check_private(shard.container)
    info = store.properties(shard.container, shard.blob)
    with store.open_read(shard.container, shard.blob) as blob:
        head = blob.read(_HEADER_BYTES)
    try:
        header = read_header(io.BytesIO(head))
    except SealedFileError as exc:
        raise DatasetCheckFailed(f"{where}: the sealed header does not parse: {exc}") from None
    problems = []
    if header.key.kek_id != kek.kek_id:
        problems.append(f"it is sealed for KEK {header.key.kek_id}, not the approved {kek.kek_id}")
    if header.key.kek_thumbprint != kek.thumbprint:
        problems.append("its KEK thumbprint is not the approved KEK's public key")
    if header.content.plaintext_sha256 != shard.plaintext_sha256:
        problems.append("its plaintext digest differs from the manifest's")
    if header.content.plaintext_length != shard.plaintext_bytes:
        problems.append(f"it holds {header.content.plaintext_length} plaintext bytes, the manifest says {shard.plaintext_bytes}")
    if header.sealed_length != info.size or info.size != shard.sealed_bytes:
        problems.append(f"it is {info.size} bytes; its header says {header.sealed_length}, the manifest {shard.sealed_bytes}")
    missing = {key: value for key, value in shard.context.items() if header.content.context.get(key) != value}
    if missing:
        problems.append(f"its seal context lacks {missing}")
    if info.metadata.get("plaintext_sha256") not in (None, shard.plaintext_sha256):
        problems.append("its blob metadata names another plaintext digest")
    if problems:
        raise DatasetCheckFailed(f"{where}: " + "; ".join(problems))


class DataSecurityCheckOperator(BaseOperator):
    """Verifies the sealed dataset ``dataset_id``/``version`` (or ``latest``) before any TEE sees it, without a key.

    The data owner's manifest must name the approved KEK; each shard's header must parse and match its
    manifest entry (KEK id and thumbprint, plaintext length and digest, seal context, sealed size); the
    containers must be private; and the KEK must still carry the approved release policy
    (``release_policy_sha256``, from environment preparation).

    Under a contract (``contract``: what environment preparation verified of it), ``dataset_id`` and ``version``
    are not used: every dataset of the contract is checked so, at the version the contract pins, against its own
    KEK (each still under the contract's release policy), and its manifest must hash (``DatasetManifest.sha256``: its
    signed bytes) to the digest the contract pins.

    Returns (XCom) a :class:`~securetrain.core.contracts.stages.DataCheckResult`: the manifest as the training
    job names it, and its shards for the record (the TEE reads the shards from the owner-signed manifest
    itself; docs/security.md).
    """

    template_fields: Sequence[str] = ("dataset_id", "version", "kek_id", "release_policy_sha256", "contract")
    ui_color = "#e3f1dc"

    def __init__(
        self,
        *,
        dataset_id: str,
        version: str,
        kek_id: str,
        release_policy_sha256: str,
        contract: Mapping[str, Any] | None = None,
        container: str = DATASETS_CONTAINER,
        storage_conn_id: str = SecureStorageHook.default_conn_name,
        keyvault_conn_id: str = KeyVaultHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_id = dataset_id
        self.version = version
        self.kek_id = kek_id
        self.release_policy_sha256 = release_policy_sha256
        self.contract = contract
        self.container = container
        self.storage_conn_id = storage_conn_id
        self.keyvault_conn_id = keyvault_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        with fail_closed("data security check"):
            vault = KeyVaultHook(self.keyvault_conn_id)
            with SecureStorageHook(self.storage_conn_id).blob_store() as store:
                store.check_private(self.container)
                if self.contract:
                    checked = self._contract_datasets(store, vault, RunContract.model_validate(self.contract))
                else:
                    if self.version == LATEST:
                        self.version = DatasetManifest.latest_version(store, self.container, self.dataset_id)
                        self.log.info("the latest version of %s is %s", self.dataset_id, self.version)
                    checked = [self._check_dataset(store, vault, self.dataset_id, self.version, self.kek_id)]
        (first_ref, first), *_ = checked
        result = DataCheckResult(
            dataset_id=first.dataset_id,
            version=first.version,
            manifest_blob=f"{first_ref.container}/{first_ref.manifest}",
            job_datasets=tuple(ref for ref, _ in checked),
            datasets=tuple(
                CheckedShard(container=shard.container, blob=shard.blob, format=shard.format, context=dict(shard.context),
                             kek_id=shard.kek_id, plaintext_sha256=shard.plaintext_sha256, size=shard.sealed_bytes)
                for _, manifest in checked for shard in manifest.shards
            ),  # fmt: skip
            **({"manifests": tuple(
                CheckedManifest(dataset_id=manifest.dataset_id, version=manifest.version,
                                manifest_blob=f"{ref.container}/{ref.manifest}", manifest_sha256=manifest.sha256())
                for ref, manifest in checked
            )} if self.contract else {}),  # fmt: skip
        )
        return result.model_dump(mode="json")

    def _check_dataset(
        self, store: BlobStore, vault: KeyVaultHook, dataset_id: str, version: str, kek_id: str,
        pinned_sha256: str | None = None,
    ) -> tuple[DatasetRef, DatasetManifest]:  # fmt: skip
        """``dataset_id``/``version`` checked for the KEK ``kek_id`` (still under the approved policy), its manifest
        first hashing to ``pinned_sha256`` if given (what a contract pins): the manifest as the job names it, and the
        manifest."""
        enforced = vault.release_policy(kek_id)
        if enforced.sha256 != self.release_policy_sha256:
            raise DatasetCheckFailed(
                f"the KEK {kek_id} is now released under policy sha256 {enforced.sha256}, not the approved "
                f"{self.release_policy_sha256}"
            )
        kek = vault.kek_public_key(kek_id)
        manifest_blob = DatasetManifest.blob_name(dataset_id, version)
        ref = DatasetRef(container=self.container, manifest=manifest_blob)
        manifest = DatasetManifest.read(store, self.container, manifest_blob)
        if pinned_sha256 is not None:
            digest = manifest.sha256()
            if digest != pinned_sha256:
                raise DatasetCheckFailed(
                    f"{self.container}/{manifest_blob} hashes to {digest}, not to the {pinned_sha256} the contract "
                    f"pins for {dataset_id} version {version} (term datasets[{dataset_id}].manifest)"
                )
            self.log.info("%s version %s: the manifest is the one the contract pins (sha256 %s)", dataset_id, version, digest)
        # The manifest names the KEK the owner sealed for; a rotation since then rewrapped the shards to a
        # newer version of the same key, which their headers (checked below) must name.
        if _versionless(manifest.kek_id) != _versionless(kek_id) or manifest.dataset_id != dataset_id:
            raise DatasetCheckFailed(
                f"{self.container}/{manifest_blob} describes {manifest.dataset_id} sealed for {manifest.kek_id}, "
                f"not {dataset_id} for the approved KEK {kek_id}"
            )
        for shard in manifest.shards:
            check_shard(store, shard, kek)
            self.log.info("%s/%s: header, digest, size and context match the manifest; sealed for %s",
                          shard.container, shard.blob, kek.kek_id)  # fmt: skip
        return ref, manifest

    def _contract_datasets(
        self, store: BlobStore, vault: KeyVaultHook, run_contract: RunContract
    ) -> list[tuple[DatasetRef, DatasetManifest]]:
        """Every dataset of the run's contract at the version it pins, each manifest hashing to the pinned digest."""
        from securetrain.airflow.governance import pinned_version, stored_contract  # noqa: PLC0415 - light DAG parsing

        contract = stored_contract(store, run_contract.digest).contract
        checked = []
        for terms in contract.datasets:
            pinned = pinned_version(terms)
            kek_id = run_contract.kek_ids.get(terms.dataset_id)
            if kek_id is None:
                raise DatasetCheckFailed(f"environment preparation checked no KEK for dataset {terms.dataset_id}")
            checked.append(self._check_dataset(store, vault, terms.dataset_id, pinned.version, kek_id, pinned.manifest_sha256))
        return checked
