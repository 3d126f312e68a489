"""The local stack's consortium: two hospitals pool halves of breast-cancer for a research lab, under a contract
all three signed (examples/contracts/two-owner-clinical.json).

:func:`form_consortium` plays every party's part, each with its own keys, as each would on its own machine:

1. each hospital makes a KEK that is released to nothing yet (:func:`contract_keks`)
   and publishes its half of the data (:func:`~securetrain.core.dataset_publishing.publish_dataset`: validated,
   sealed for that KEK, uploaded, the manifest signed with the hospital's key);
2. the contract is proposed from the terms file, completed with the parties' keys, the manifests' digests, the
   KEKs, the stack's approved workload and the lab's recipient key; every party signs it; it is published;
3. each hospital binds its KEK to the signed contract: released only to the approved workload enforcing it.

The lab's keys (an Ed25519 signing key, an RSA key the model is sealed to) are made under
``<state>/secrets/research-lab/``; the hospitals' are the stack's data owner keys (:mod:`securetrain.localstack.data_owner`).
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.approved_release_policies import UNBOUND_CONTRACT
from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.contracts.job_spec import ContractRef, DatasetRef
from securetrain.core.dataset_publishing import publish_dataset
from securetrain.core.datasets import bundled_table
from securetrain.core.governance.contract import contract_release_policy
from securetrain.core.governance.proposal import propose
from securetrain.core.governance.signatures import SignedContract, sign
from securetrain.core.governance.store import CONTRACTS_CONTAINER, ContractStore
from securetrain.core.keyvault import (
    bind_kek_to_contract,
    create_contract_kek,
    fetch_kek_public_key,
    key_client_from_settings,
)
from securetrain.core.onboarding import DatasetManifest
from securetrain.core.settings import ServiceSettings
from securetrain.core.storage import BlobStore
from securetrain.localstack.data_owner import DATA_OWNERS, StackDataOwner, signing_key
from securetrain.localstack.layout import StackLayout, write_file
from securetrain.localstack.services.attestation import local_reference_values, local_release_policy
from securetrain.localstack.settings import settings_path

log = logging.getLogger(__name__)

TERMS_FILE = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "two-owner-clinical.json"
CONSUMER = "research-lab"
#: Where the pooled datasets lie.
DATASETS_CONTAINER = "datasets"
#: Each hospital's dataset in the contract.
DATASET_OF = {DATA_OWNERS[0].party: "breast-cancer-a", DATA_OWNERS[1].party: "breast-cancer-b"}
VALID_FOR = datetime.timedelta(days=30)


def consumer_signing_key(layout: StackLayout) -> Ed25519PrivateKey:
    return load_or_create_signing_key(layout.secrets_dir / CONSUMER / "signing-key.pem")


def consumer_recipient_key(layout: StackLayout) -> rsa.RSAPrivateKey:
    """The research lab's RSA key: the model is sealed to its public half; the lab alone opens it."""
    path = layout.secrets_dir / CONSUMER / "recipient-key.pem"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        write_file(path, pem, mode=0o600)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass(frozen=True)
class Consortium:
    """A formed consortium: the signed contract and each hospital's published dataset (its signed manifest)."""

    contract: SignedContract
    datasets: dict[str, tuple[DatasetRef, DatasetManifest]]

    @property
    def digest(self) -> str:
        return self.contract.contract.digest()

    @property
    def ref(self) -> ContractRef:
        return ContractRef(container=CONTRACTS_CONTAINER, digest=self.digest)

    def dataset_refs(self) -> list[DatasetRef]:
        return [ref for ref, _ in self.datasets.values()]

    def kek_id(self, owner: StackDataOwner) -> str:
        return self.datasets[owner.party][1].kek_id


def half_of_breast_cancer(layout: StackLayout, owner: StackDataOwner) -> Path:
    """``owner``'s half of breast-cancer (alternate rows) as a Parquet file in its own zone."""
    table = bundled_table("breast-cancer")
    index = DATA_OWNERS.index(owner)
    path = layout.root / "consortium" / f"{DATASET_OF[owner.party]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(list(range(index, table.num_rows, len(DATA_OWNERS)))), path)
    return path


def _owner_settings(layout: StackLayout) -> ServiceSettings:
    return ServiceSettings.load(settings_path(layout, "data-owner"))


def contract_keks(layout: StackLayout, attestation_authority: str, name: str) -> dict[str, str]:
    """Each hospital's new KEK ``kek-<party>-<name>``, released to nothing until bound to a contract; versioned ids."""
    unbound = local_release_policy(layout, attestation_authority, contract_digest=UNBOUND_CONTRACT)
    with key_client_from_settings(_owner_settings(layout)) as vault:
        return {owner.party: str(create_contract_kek(vault, f"kek-{owner.party}-{name}", unbound).id) for owner in DATA_OWNERS}


def agree(
    layout: StackLayout, attestation_authority: str, datasets: dict[str, tuple[DatasetRef, DatasetManifest]],
    *, terms: dict | None = None,
) -> Consortium:  # fmt: skip
    """Propose the contract over the hospitals' published ``datasets`` (by party), have every party sign it,
    publish it, and have each hospital bind its KEK to it."""
    terms = terms if terms is not None else json.loads(TERMS_FILE.read_text())
    keys = {owner.party: signing_key(layout, owner) for owner in DATA_OWNERS} | {CONSUMER: consumer_signing_key(layout)}
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    contract = propose(
        terms,
        party_keys={party: key.public_key() for party, key in keys.items()},
        dataset_versions={DATASET_OF[p]: [(m.version, m.sha256())] for p, (_, m) in datasets.items()},
        keks={DATASET_OF[p]: m.kek_id.rsplit("/", 1)[0] for p, (_, m) in datasets.items()},
        recipient_keys={CONSUMER: _public_pem(consumer_recipient_key(layout))},
        not_before=now - datetime.timedelta(minutes=5), expires=now + VALID_FOR,
        workloads=[local_reference_values(layout, attestation_authority)],
    )  # fmt: skip
    for party, key in keys.items():
        contract = sign(contract, party, key)
    settings = _owner_settings(layout)
    with key_client_from_settings(settings) as vault, BlobStore.from_settings(settings) as store:
        digest = ContractStore(store, CONTRACTS_CONTAINER).publish(contract)
        bound = contract_release_policy(contract.contract)
        for _, manifest in datasets.values():
            bind_kek_to_contract(vault, manifest.kek_id, bound)
    log.info("contract %s signed by %s and published; each hospital's KEK bound to it", digest, ", ".join(keys))
    return Consortium(contract, datasets)


def form_consortium(
    layout: StackLayout, attestation_authority: str, *, terms: dict | None = None, name: str | None = None
) -> Consortium:
    """The whole consortium at once (module docstring), each hospital publishing with
    :func:`~securetrain.core.dataset_publishing.publish_dataset`; ``terms`` replaces the example's terms, ``name``
    makes its KEKs and dataset versions its own (default: a fresh one)."""
    name = name or uuid.uuid4().hex[:8]
    keks = contract_keks(layout, attestation_authority, name)
    datasets = {}
    settings = _owner_settings(layout)
    with BlobStore.from_settings(settings) as store:
        for owner in DATA_OWNERS:
            published = publish_dataset(
                half_of_breast_cancer(layout, owner), dataset_id=DATASET_OF[owner.party], version=f"v-{name}",
                label="label", features=None, suite=None, kek=fetch_kek_public_key(keks[owner.party], settings),
                owner_key=signing_key(layout, owner), store=store, container=DATASETS_CONTAINER,
            )  # fmt: skip
            container, blob = published.manifest_blob.split("/", 1)
            datasets[owner.party] = (DatasetRef(container=container, manifest=blob), DatasetManifest.read(store, container, blob))
    return agree(layout, attestation_authority, datasets, terms=terms)

