"""The contract a job runs under, enforced inside the TEE: docs/governance.md ("Enforcement in the TEE").

Airflow names the contract by its digest; nothing else about it comes from Airflow. Before the TEE attests or
asks for a key, :func:`admit` reads the contract stored under that digest (the bytes must hash to it), checks that
every party signed it and that it is in force given every revocation stored beside it, reads the job's dataset
manifests and the contract's privacy-budget ledger, and checks the job against the terms
(:func:`~securetrain.core.governance.terms.check_job`). While the job trains, :class:`ContractGuard` repeats the
in-force check at each epoch boundary and has every owner's KEK released again, so that a revocation, or an owner
disabling its key, stops the job before another epoch reads that owner's data.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from securetrain.core.attestation.tokens import TokenRejected, ValidatedToken
from securetrain.core.audit.tee_log import TokenCheck
from securetrain.core.contracts.job_spec import DatasetRef, JobSpec
from securetrain.core.errors import SecuretrainError, SecurityViolation
from securetrain.core.governance.budget import read_ledger
from securetrain.core.governance.contract import DatasetTerms
from securetrain.core.governance.in_force import ContractRevoked, VerifiedContract, verify_contract
from securetrain.core.governance.store import ContractStore
from securetrain.core.governance.terms import check_job
from securetrain.core.keyvault import same_key
from securetrain.core.onboarding import DatasetManifest
from securetrain.core.sealed import KekPrivateKey
from securetrain.core.storage import BlobStore, StorageError
from securetrain.tee.attest import Attester, TeeKey, token_contract
from securetrain.tee.privacy_budget import open_ledger

log = logging.getLogger(__name__)

#: Releases one KEK version to the job's TEE key on the strength of its current token.
Release = Callable[[str, ValidatedToken, TeeKey], KekPrivateKey]


class ContractUnavailable(SecurityViolation):
    """The job's contract, a revocation or the budget ledger cannot be read: the TEE does not run the job."""


@dataclass(frozen=True)
class AdmittedJob:
    """A job the TEE checked against its contract: what it enforces from here on."""

    contract: VerifiedContract
    manifests: tuple[tuple[DatasetRef, DatasetManifest], ...]
    #: The ε each dataset of the contract had spent when the job was admitted (the ledger's count).
    spent: Mapping[str, float]

    @property
    def digest(self) -> str:
        return self.contract.digest

    def datasets(self) -> list[DatasetTerms]:
        """The contract's terms of each dataset the job trains on, in the job's order."""
        terms = {dataset.dataset_id: dataset for dataset in self.contract.contract.datasets}
        return [terms[manifest.dataset_id] for _, manifest in self.manifests]

    def owner_kek_ids(self, job_kek_id: str) -> list[str]:
        """The KEK versions to release besides the job's own: each other owner's, as its manifest names it."""
        kek_ids: list[str] = []
        for _, manifest in self.manifests:
            if not any(same_key(manifest.kek_id, known) for known in (job_kek_id, *kek_ids)):
                kek_ids.append(manifest.kek_id)
        return kek_ids

    def privacy_reservation(self, spec: JobSpec) -> dict[str, float]:
        """The ε the job reserves from each dataset's budget: what it asks for, on every dataset it trains on."""
        if spec.privacy is None:
            return {}
        return {terms.dataset_id: spec.privacy.epsilon for terms in self.datasets()}

    def privacy_totals(self) -> dict[str, float]:
        return {terms.dataset_id: terms.privacy.epsilon_total for terms in self.datasets()}

    def min_noise_multiplier(self) -> float:
        """The noise floor: the highest any of the job's datasets' owners set."""
        return max(terms.privacy.noise_multiplier_min for terms in self.datasets())

    def summary(self) -> dict[str, object]:
        """What the TEE log records of the admitted contract."""
        return {"contract": self.digest, "signers": list(self.contract.signers),
                "datasets": {manifest.dataset_id: manifest.version for _, manifest in self.manifests}}  # fmt: skip


def admit(spec: JobSpec, store: BlobStore, check_token: TokenCheck, *, now: datetime.datetime) -> AdmittedJob:
    """Check ``spec`` against the contract it names, before any attestation or key.

    Raises:
        ContractUnavailable: the contract, a revocation, a manifest or the ledger cannot be read;
        SecurityViolation subclasses: a signature missing or bad, the contract revoked or not in force, the
            stored contract not the one named, the ledger not verifying, or a term the job breaks
            (:class:`~securetrain.core.governance.terms.ContractViolation`, naming it).
    """
    if spec.contract is None:
        raise ValueError("admit() is for a job that names a contract")
    digest = spec.contract.digest
    contracts = ContractStore(store, spec.contract.container)
    try:
        signed, revocations = contracts.read(digest), contracts.revocations(digest)
        manifests = tuple((ref, DatasetManifest.read(store, ref.container, ref.manifest)) for ref in spec.datasets)
        ledger = read_ledger(open_ledger(store, digest), digest, check_token)
    except StorageError as exc:
        raise ContractUnavailable(f"cannot read what contract {digest} needs checked: {exc}") from None
    verified = verify_contract(signed, revocations, now)
    check_job(verified.contract, spec, manifests, spent=ledger.counted())
    log.info("job %s runs under contract %s, signed by %s", spec.job_id, digest, ", ".join(verified.signers))
    return AdmittedJob(verified, manifests, ledger.counted())


def ledger_token_check(attester: Attester, digest: str) -> TokenCheck:
    """How the TEE checks the tokens in a contract's ledger: issued by its attestation authority (expiry aside:
    they are historical) to a TEE that was enforcing this contract."""

    def check(raw: str) -> Mapping[str, object]:
        token = attester.historical(raw)
        if token_contract(token) != digest:
            raise TokenRejected(f"a ledger entry's token names contract {token_contract(token)}, not {digest}")
        return token.claims

    return check


class ContractWithdrawn(SecurityViolation):
    """While the job ran, a party revoked the contract or an owner withdrew its key; the job stopped."""

    def __init__(self, message: str, details: Mapping[str, object]) -> None:
        super().__init__(message)
        self.details = dict(details)


class ContractGuard:
    """The checks at each epoch boundary of a job under a contract: still in force, every owner's key still released."""

    def __init__(self, admitted: AdmittedJob, spec: JobSpec, store: BlobStore, release: Release) -> None:
        assert spec.contract is not None
        self._admitted = admitted
        self._store = ContractStore(store, spec.contract.container)
        self._kek_ids = [spec.kek_id, *admitted.owner_kek_ids(spec.kek_id)]
        self._release = release

    def check(self, token: ValidatedToken, key: TeeKey) -> None:
        """Raise :class:`ContractWithdrawn` unless the contract is in force and every owner's vault still
        releases its KEK to this job under the current token."""
        digest = self._admitted.digest
        try:
            revocations = self._store.revocations(digest)
            verify_contract(self._store.read(digest), revocations, datetime.datetime.now(datetime.UTC))
        except SecurityViolation as exc:
            details: dict[str, object] = {"contract": digest, "reason": str(exc)}
            if isinstance(exc, ContractRevoked):
                details |= {"party": exc.party, "revoked_at": exc.revoked_at}
            raise ContractWithdrawn(f"contract {digest} is no longer in force, the job stops: {exc}", details) from exc
        except (SecuretrainError, StorageError) as exc:
            # Not knowing whether the contract still holds is not knowing that it does: stop.
            raise ContractWithdrawn(f"could not check contract {digest}, the job stops: {exc}",
                                    {"contract": digest, "reason": str(exc)}) from exc  # fmt: skip
        for kek_id in self._kek_ids:
            try:
                self._release(kek_id, token, key)
            except SecuretrainError as exc:
                raise ContractWithdrawn(f"the vault no longer releases {kek_id} to this job, which stops: {exc}",
                                        {"contract": digest, "kek_id": kek_id, "refusal": str(exc)}) from exc  # fmt: skip
