"""The signed contract a training run is under, as Airflow reads and checks it (docs/workflow.md, "A run under a
contract").

Airflow is no party to a contract and holds none of its keys. What it checks here (every signature, in force, the
datasets' pinned manifests, each owner's KEK bound to the contract) is an early failure that names the party or
term before a TEE is started; the TEE checks all of it again for itself, and only its checks decide.

- :func:`verified_contract`: the contract stored under a digest, every signature verified, in force now;
- :func:`stored_contract`: the contract stored under a digest (its bytes hash to the digest), not verified again;
- :func:`pinned_version`: the version of a contracted dataset a run trains on;
- ``contract_release_policy(contract, bound=False)``: what the TEE's answer to Airflow's own nonce must satisfy in a
  run under a contract (a TEE enforces a contract only for a job, so that answer names none);
- :func:`contract_budget`: each dataset's privacy budget, spent and left, from the contract's verified ledger.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from securetrain.core.errors import ConfigurationError
from securetrain.core.governance.budget import read_contract_ledger
from securetrain.core.governance.contract import DatasetTerms, PinnedVersion, TrainingContract
from securetrain.core.governance.in_force import VerifiedContract, verify_contract
from securetrain.core.governance.signatures import SignedContract
from securetrain.core.governance.store import CONTRACTS_CONTAINER, ContractStore
from securetrain.core.storage import BlobNotFound, BlobStore, ContainerNotFound


def stored_contract(store: BlobStore, digest: str, container: str = CONTRACTS_CONTAINER) -> SignedContract:
    """The signed contract stored under ``digest`` in ``container``; its bytes hash to ``digest``.

    Raises:
        ConfigurationError: nothing is stored under ``digest`` (the trigger form names a contract not published);
        StoredContractInvalid: what is stored there is not that contract.
    """
    try:
        return ContractStore(store, container).read(digest)
    except (BlobNotFound, ContainerNotFound):
        raise ConfigurationError(f"no contract {digest} is published in container {container!r}") from None


def verified_contract(store: BlobStore, digest: str, container: str = CONTRACTS_CONTAINER) -> VerifiedContract:
    """The contract stored under ``digest``, checked as the TEE will check it: every party's signature, every
    revocation stored beside it, its validity now.

    Raises:
        ConfigurationError: no such contract is published;
        SecurityViolation subclasses naming the party (a signature missing or bad, a revocation) or the term
            (``validity.not_before``, ``validity.expires``).
    """
    signed = stored_contract(store, digest, container)
    revocations = ContractStore(store, container).revocations(digest)
    return verify_contract(signed, revocations, datetime.datetime.now(datetime.UTC))


def pinned_version(terms: DatasetTerms) -> PinnedVersion:
    """The version of ``terms``'s dataset a run under the contract trains on: the last one the contract pins."""
    return terms.versions[-1]


@dataclass(frozen=True)
class DatasetBudget:
    """One dataset's privacy budget under a contract, in ε: what the contract allows in all, what settled runs
    spent, what runs still open reserved, and what is left."""

    dataset_id: str
    total: float
    spent: float
    reserved: float
    left: float


def contract_budget(
    store: BlobStore, contract: TrainingContract, keys_for: Callable[[str], Any]
) -> list[DatasetBudget]:
    """Each contracted dataset's budget, from the contract's ledger in ``store``, verified without a TEE: every
    entry's attestation token checked as historical evidence (signed by a key its issuer publishes, ``keys_for``;
    claims satisfying the contract's release policy, which requires this contract's digest).

    Raises:
        LedgerInvalid: the ledger is not what TEEs enforcing this contract wrote.
    """
    state = read_contract_ledger(store, contract, keys_for)
    spent, reserved = state.spent_and_reserved()
    return [
        DatasetBudget(dataset_id=terms.dataset_id, total=terms.privacy.epsilon_total,
                      spent=spent.get(terms.dataset_id, 0.0), reserved=reserved.get(terms.dataset_id, 0.0),
                      left=state.remaining(terms.dataset_id, terms.privacy.epsilon_total))
        for terms in contract.datasets
    ]  # fmt: skip
