"""The parties of the example two-hospital contract (examples/contracts/two-owner-clinical.json), with fresh keys:
their signing keys, each hospital's signed manifest, and a job inside the terms."""

from __future__ import annotations

import datetime
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.approved_release_policies import SnpReferenceValues
from securetrain.core.contracts.job_spec import DatasetRef, JobSpec
from securetrain.core.governance.proposal import propose
from securetrain.core.governance.signatures import SignedContract, sign
from securetrain.core.onboarding import DatasetManifest, SealedShard

TERMS_FILE = Path(__file__).parents[1] / "examples" / "contracts" / "two-owner-clinical.json"
PARTIES = ("hospital-a", "hospital-b", "research-lab")
DATASETS = {"breast-cancer-a": "hospital-a", "breast-cancer-b": "hospital-b"}
VAULT = "https://vault.securetrain.test"
NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
NOT_BEFORE = datetime.datetime(2026, 5, 1, tzinfo=datetime.UTC)
EXPIRES = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
WORKLOAD = SnpReferenceValues(
    attestation_authority="https://maa.securetrain.test", attestation_policy="version=1.0; authorizationrules{};",
    launch_measurements=frozenset({"ab" * 48, "cd" * 48}), host_data=frozenset({"ef" * 32}),
)  # fmt: skip


@functools.cache
def consumer_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def consumer_public_pem() -> str:
    public = consumer_rsa_key().public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def kek_of(dataset_id: str) -> str:
    return f"{VAULT}/keys/kek-{dataset_id}"


def terms() -> dict[str, Any]:
    return json.loads(TERMS_FILE.read_text())


@dataclass
class Consortium:
    """Each party's key, each dataset's signed manifest, and the contract proposed over them."""

    keys: dict[str, Ed25519PrivateKey] = field(default_factory=lambda: {p: Ed25519PrivateKey.generate() for p in PARTIES})
    manifests: dict[str, DatasetManifest] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for dataset_id, owner in DATASETS.items():
            shard = SealedShard(container="datasets", blob=f"{dataset_id}/v1/part-0.sealed", format="parquet",
                                context={"dataset_id": dataset_id, "kind": "dataset", "format": "parquet"},
                                kek_id=f"{kek_of(dataset_id)}/0123456789abcdef", plaintext_sha256="00" * 32,
                                plaintext_bytes=10, sealed_bytes=100)  # fmt: skip
            manifest = DatasetManifest(dataset_id, "v1", shard.kek_id, (shard,), "2026-04-01T00:00:00Z")
            self.manifests[dataset_id] = manifest.signed(self.keys[owner])

    def proposal(self) -> SignedContract:
        return propose(
            terms(),
            party_keys={party: key.public_key() for party, key in self.keys.items()},
            dataset_versions={d: [("v1", m.sha256())] for d, m in self.manifests.items()},
            keks={dataset_id: kek_of(dataset_id) for dataset_id in DATASETS},
            recipient_keys={"research-lab": consumer_public_pem()},
            not_before=NOT_BEFORE, expires=EXPIRES, workloads=[WORKLOAD],
        )  # fmt: skip

    def signed(self, *, by: tuple[str, ...] = PARTIES) -> SignedContract:
        contract = self.proposal()
        for party in by:
            contract = sign(contract, party, self.keys[party])
        return contract

    def refs(self) -> list[tuple[DatasetRef, DatasetManifest]]:
        return [(DatasetRef(container="datasets", manifest=DatasetManifest.blob_name(d, "v1")), m)
                for d, m in self.manifests.items()]  # fmt: skip


def job(**changes: Any) -> JobSpec:
    """A job inside the example's terms; ``changes`` replace top-level fields (a dict is merged one level down)."""
    document: dict[str, Any] = {
        "run_id": "manual__2026-06-01T00:00:00+00:00",
        "nonce": "n0nce-0f-at-least-22-chars",
        "kek_id": f"{kek_of('breast-cancer-a')}/0123456789abcdef",
        "datasets": [{"container": "datasets", "manifest": DatasetManifest.blob_name(d, "v1")} for d in DATASETS],
        "columns": {"label": "target"},
        "model": {"name": "mlp", "params": {"hidden": [32, 16], "dropout": 0.1}},
        "hyperparameters": {"epochs": 5, "batch_size": 64, "learning_rate": 0.01, "seed": 7, "optimizer": "adam"},
        "expectation_suite": {"name": "bc", "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "target"}}]},
        "checkpoints": {"container": "checkpoints", "prefix": "run-1/"},
        "output": {"container": "models", "blob": "run-1/model.sealed"},
        "privacy": {"epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0, "accountant": "prv"},
    }  # fmt: skip
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        elif value is None:
            document.pop(key)
        else:
            document[key] = value
    return JobSpec.from_json(document)
