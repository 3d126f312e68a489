"""The TEE decides what it opens: a job's datasets resolved from their owners' signed manifests.

Before it attests or asks for a key, the TEE accepts a manifest only if a data owner pinned in its
configuration signed it, it describes data sealed for the job's KEK (same vault and key name: a rotation may
have moved the shards to a newer version), and every shard carries ``kind: dataset`` in its seal context
(docs/trainer.md, "The TEE decides what it opens"). Shards, formats and seal contexts come from the signed
manifest, never from the job spec.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from securetrain.core.contracts.job_spec import DatasetRef, JobSpec
from securetrain.core.contracts.training import DatasetShard, TrainingSpec
from securetrain.core.errors import SecurityViolation
from securetrain.core.keyvault import same_key
from securetrain.core.onboarding import DATASET_KIND, DatasetManifest
from securetrain.core.storage import BlobStore
from securetrain.tee.data_owners import DataOwnerKeys

log = logging.getLogger(__name__)


class DatasetRefused(SecurityViolation):
    """A dataset manifest is not one this TEE may train on: unsigned, another KEK, or a shard that is no dataset."""


def dataset_shards(
    ref: DatasetRef, manifest: DatasetManifest, owners: DataOwnerKeys, kek_ids: Sequence[str]
) -> list[DatasetShard]:
    """The shards of ``manifest`` (read from ``ref``) that the TEE may open for a job whose KEKs are ``kek_ids``.

    Raises:
        DatasetRefused: naming the check that failed.
    """
    where = f"{ref.container}/{ref.manifest}"
    try:
        owner = owners.verify(manifest.to_json(), what=f"the dataset manifest {where}")
    except SecurityViolation as exc:
        raise DatasetRefused(str(exc)) from None
    if not any(same_key(manifest.kek_id, kek_id) for kek_id in kek_ids):
        raise DatasetRefused(f"{where} describes data sealed for {manifest.kek_id}, not for the job's KEK {kek_ids[0]}")
    shards = []
    for shard in manifest.shards:
        if shard.context.get("kind") != DATASET_KIND:
            raise DatasetRefused(
                f"{where} lists {shard.container}/{shard.blob} sealed as kind {shard.context.get('kind')!r}; "
                f"only kind {DATASET_KIND!r} is training data"
            )
        if shard.format not in ("parquet", "safetensors", "arrow"):
            raise DatasetRefused(f"{where} lists {shard.container}/{shard.blob} in unknown format {shard.format!r}")
        shards.append(DatasetShard(container=shard.container, blob=shard.blob, format=shard.format,
                                   context=dict(shard.context), kek_id=manifest.kek_id))  # fmt: skip
    log.info("dataset %s version %s: %d shard(s), manifest signed by data owner %s…", manifest.dataset_id,
             manifest.version, len(shards), owner[:16])  # fmt: skip
    return shards


def read_manifests(spec: JobSpec, store: BlobStore) -> list[tuple[DatasetRef, DatasetManifest]]:
    """The manifest of each dataset ``spec`` names, as storage serves it (checked by :func:`resolve_training`).

    Raises:
        ManifestInvalid: one does not parse.
    """
    return [(ref, DatasetManifest.read(store, ref.container, ref.manifest)) for ref in spec.datasets]


def resolve_training(
    spec: JobSpec, manifests: Sequence[tuple[DatasetRef, DatasetManifest]], owners: DataOwnerKeys,
    other_kek_ids: Sequence[str] = (),
) -> TrainingSpec:  # fmt: skip
    """The job's training spec over the shards of its owner-signed ``manifests`` (:func:`read_manifests`), each
    sealed for the job's KEK or, under a contract, for one of ``other_kek_ids`` (the other owners' KEKs the
    contract names).

    Raises:
        DatasetRefused: a manifest failed a check;
        JobSpecError: the shards cannot be trained together (formats, overlap with the outputs).
    """
    shards: list[DatasetShard] = []
    for ref, manifest in manifests:
        shards += dataset_shards(ref, manifest, owners, [spec.kek_id, *other_kek_ids])
    return TrainingSpec.for_job(spec, shards)
