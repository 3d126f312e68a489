"""The local stack's consortium: two hospitals pool halves of breast-cancer for a research lab, under a contract
all three signed (examples/contracts/two-owner-clinical.json).

:func:`form_consortium` plays every party's part, each with its own keys, as each would on its own machine:

1. each hospital makes a KEK that is released to nothing yet (:func:`~securetrain.core.keyvault.create_contract_kek`)
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
from securetrain.core.dataset_publishing import PublishedDataset, publish_dataset
from securetrain.core.datasets import bundled_table
from securetrain.core.governance.contract import contract_release_policy
from securetrain.core.governance.proposal import propose
from securetrain.core.governance.signatures import SignedContract, sign
from securetrain.core.governance.store import CONTRACTS_CONTAINER, ContractStore
from securetrain.core.keyvault import bind_kek_to_contract, create_contract_kek, kek_public_key, key_client_from_settings
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
    """A formed consortium: the signed contract, where it lies, each hospital's published dataset and KEK."""

    contract: SignedContract
    published: dict[str, PublishedDataset]

    @property
    def digest(self) -> str:
        return self.contract.contract.digest()

    @property
    def ref(self) -> ContractRef:
        return ContractRef(container=CONTRACTS_CONTAINER, digest=self.digest)

    def dataset_refs(self) -> list[DatasetRef]:
        refs = []
        for published in self.published.values():
            container, manifest = published.manifest_blob.split("/", 1)
            refs.append(DatasetRef(container=container, manifest=manifest))
        return refs

    def kek_id(self, owner: StackDataOwner) -> str:
        return self.published[owner.party].kek_id


def _halves(layout: StackLayout) -> dict[str, Path]:
    """Each hospital's half of breast-cancer as a Parquet file in its own zone (alternate rows)."""
    table = bundled_table("breast-cancer")
    halves = {}
    for index, owner in enumerate(DATA_OWNERS):
        path = layout.root / "consortium" / f"{DATASET_OF[owner.party]}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(list(range(index, table.num_rows, len(DATA_OWNERS)))), path)
        halves[owner.party] = path
    return halves


def form_consortium(
    layout: StackLayout, attestation_authority: str, *, terms: dict | None = None, name: str | None = None
) -> Consortium:
    """Form a consortium on the running stack of ``layout`` (module docstring); ``terms`` replaces the example's
    terms, ``name`` makes its KEKs and dataset versions its own (default: a fresh one)."""
    name = name or uuid.uuid4().hex[:8]
    terms = terms if terms is not None else json.loads(TERMS_FILE.read_text())
    owner_settings = settings_path(layout, "data-owner")
    unbound = local_release_policy(layout, attestation_authority, contract_digest=UNBOUND_CONTRACT)
    published: dict[str, PublishedDataset] = {}
    halves = _halves(layout)
    settings = ServiceSettings.load(owner_settings)
    with key_client_from_settings(settings) as vault, BlobStore.from_settings(settings) as store:
        for owner in DATA_OWNERS:
            kek = create_contract_kek(vault, f"kek-{owner.party}-{name}", unbound)
            published[owner.party] = publish_dataset(
                halves[owner.party], dataset_id=DATASET_OF[owner.party], version=f"v-{name}", label="label",
                features=None, suite=None, kek=kek_public_key(kek), owner_key=signing_key(layout, owner), store=store,
                container=DATASETS_CONTAINER,
            )  # fmt: skip
        keys = {owner.party: signing_key(layout, owner) for owner in DATA_OWNERS} | {CONSUMER: consumer_signing_key(layout)}
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        contract = propose(
            terms,
            party_keys={party: key.public_key() for party, key in keys.items()},
            dataset_versions={DATASET_OF[p]: [(d.version, d.manifest_sha256)] for p, d in published.items()},
            keks={DATASET_OF[p]: d.kek_id.rsplit("/", 1)[0] for p, d in published.items()},
            recipient_keys={CONSUMER: _public_pem(consumer_recipient_key(layout))},
            not_before=now - datetime.timedelta(minutes=5), expires=now + VALID_FOR,
            workloads=[local_reference_values(layout, attestation_authority)],
        )  # fmt: skip
        for party, key in keys.items():
            contract = sign(contract, party, key)
        digest = ContractStore(store, CONTRACTS_CONTAINER).publish(contract)
        bound = contract_release_policy(contract.contract)
        for owner in DATA_OWNERS:
            bind_kek_to_contract(vault, published[owner.party].kek_id, bound)
    log.info("consortium %s: contract %s signed by %s; each hospital's KEK bound to it", name, digest, ", ".join(keys))
    return Consortium(contract, published)

