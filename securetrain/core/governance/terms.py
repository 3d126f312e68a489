"""Whether a job stays inside a contract's terms: :func:`check_job`, the TEE's check before it asks for any key.

Each refusal is a :class:`ContractViolation` whose ``term`` is the dotted path of the contract term it breaks
(``datasets[breast-cancer-a].version``, ``job_space.batch_size``, ``privacy[breast-cancer-a].epsilon_total``),
so the job's owner, the parties and the audit log see which promise the job would have broken. The terms, in
the order they are checked:

- the job's datasets: each manifest belongs to a dataset of the contract, is a pinned version and hashes to
  the pinned digest, carries its owner party's signature, and is sealed to the contracted KEK; the job's own
  KEK (checkpoints are sealed to it) is one of those KEKs;
- the job space: model and parameters, epochs, batch size, learning rate, optimizer, expectation types;
- privacy, per dataset: DP-SGD where required, an allowed accountant, δ and clipping norm within bounds, ε
  within the per-run bound and within what is left of the dataset's budget (``spent`` is what the ledger
  says earlier runs under this contract spent). The noise floor is the trainer's to enforce: the job names ε,
  and the noise follows from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from securetrain.core import signed_documents
from securetrain.core.contracts.job_spec import DatasetRef, JobSpec
from securetrain.core.errors import SecurityViolation
from securetrain.core.governance.contract import DatasetTerms, TrainingContract
from securetrain.core.keyvault import same_key
from securetrain.core.onboarding import DatasetManifest


class ContractViolation(SecurityViolation):
    """A job asks for something the contract does not allow; ``term`` names the contract term."""

    def __init__(self, term: str, message: str) -> None:
        super().__init__(f"the job breaks the contract's term {term}: {message}")
        self.term = term


def _check_dataset(contract: TrainingContract, terms: DatasetTerms, ref: DatasetRef, manifest: DatasetManifest) -> None:
    at = f"datasets[{terms.dataset_id}]"
    where = f"{ref.container}/{ref.manifest}"
    pinned = {version.version: version.manifest_sha256 for version in terms.versions}
    if manifest.version not in pinned:
        raise ContractViolation(f"{at}.version", f"{where} is version {manifest.version!r}; the contract pins "
                                f"{', '.join(sorted(pinned))}")  # fmt: skip
    digest = manifest.sha256()
    if digest != pinned[manifest.version]:
        raise ContractViolation(f"{at}.manifest", f"{where} hashes to {digest[:16]}…, not to the pinned "
                                f"{pinned[manifest.version][:16]}… of version {manifest.version}")  # fmt: skip
    # The contract's own rules make every dataset's owner one of its data-owner parties.
    owner_key = {party.id: party.signing_key for party in contract.parties}[terms.owner]
    try:
        signed_documents.verify(manifest.to_json(), owner_key.public_key(), what=f"the manifest {where}",
                                signer=f"data owner {terms.owner}")  # fmt: skip
    except signed_documents.SignatureInvalid as exc:
        raise ContractViolation(f"{at}.owner", str(exc)) from None
    if not same_key(manifest.kek_id, terms.kek):
        raise ContractViolation(f"{at}.kek", f"{where} is sealed to {manifest.kek_id}, not to the contract's {terms.kek}")


def _check_datasets(contract: TrainingContract, spec: JobSpec,
                    manifests: Sequence[tuple[DatasetRef, DatasetManifest]]) -> list[DatasetTerms]:  # fmt: skip
    if sorted(ref.model_dump_json() for ref, _ in manifests) != sorted(ref.model_dump_json() for ref in spec.datasets):
        raise ContractViolation("datasets", "the manifests checked are not exactly the datasets the job names")
    used: list[DatasetTerms] = []
    for ref, manifest in manifests:
        terms = contract.dataset(manifest.dataset_id)
        if terms is None:
            known = ", ".join(dataset.dataset_id for dataset in contract.datasets)
            raise ContractViolation("datasets", f"{ref.container}/{ref.manifest} is dataset {manifest.dataset_id!r}, "
                                    f"which the contract does not cover (it covers {known})")  # fmt: skip
        if terms in used:
            raise ContractViolation("datasets", f"the job names dataset {terms.dataset_id!r} twice")
        _check_dataset(contract, terms, ref, manifest)
        used.append(terms)
    if not any(same_key(spec.kek_id, terms.kek) for terms in used):
        raise ContractViolation("datasets", f"the job's KEK {spec.kek_id} is not the KEK of a dataset it names")
    return used


def _check_job_space(contract: TrainingContract, spec: JobSpec) -> None:
    space = contract.job_space
    model = next((model for model in space.models if model.name == spec.model.name), None)
    if model is None:
        allowed = ", ".join(model.name for model in space.models)
        raise ContractViolation("job_space.models", f"model {spec.model.name!r} is not allowed (allowed: {allowed})")
    for name, value in spec.model.params.items():
        term = f"job_space.models[{model.name}].params.{name}"
        bound = model.params.get(name)
        if bound is None:
            raise ContractViolation(term, "the contract does not let a job set this parameter")
        if not bound.allows(value):
            raise ContractViolation(term, f"{value!r} is not {bound.describe()}")
    hyper = spec.hyperparameters
    if hyper.epochs > space.max_epochs:
        raise ContractViolation("job_space.max_epochs", f"{hyper.epochs} epochs; at most {space.max_epochs} allowed")
    if not space.batch_size.min <= hyper.batch_size <= space.batch_size.max:
        raise ContractViolation("job_space.batch_size", f"{hyper.batch_size} is not within "
                                f"[{space.batch_size.min}, {space.batch_size.max}]")  # fmt: skip
    if hyper.learning_rate > space.learning_rate.max:
        raise ContractViolation("job_space.learning_rate", f"{hyper.learning_rate} is above {space.learning_rate.max}")
    if hyper.optimizer not in space.optimizers:
        raise ContractViolation("job_space.optimizers", f"{hyper.optimizer!r} is not allowed "
                                f"(allowed: {', '.join(space.optimizers)})")  # fmt: skip
    if spec.expectation_suite is not None:
        for expectation in spec.expectation_suite.expectations:
            if expectation.type not in space.expectation_types:
                raise ContractViolation("job_space.expectation_types", f"{expectation.type!r} is not an expectation "
                                        "type the contract allows")  # fmt: skip


def _check_privacy(spec: JobSpec, datasets: Sequence[DatasetTerms], spent: Mapping[str, float]) -> None:
    request = spec.privacy
    for terms in datasets:
        at, privacy = f"privacy[{terms.dataset_id}]", terms.privacy
        if request is None:
            if privacy.required:
                raise ContractViolation(f"{at}.required", "the owner requires DP-SGD; the job asks for none")
            continue
        if request.accountant not in privacy.accountants:
            raise ContractViolation(f"{at}.accountant", f"{request.accountant!r} is not allowed "
                                    f"(allowed: {', '.join(privacy.accountants)})")  # fmt: skip
        if request.delta > privacy.delta:
            raise ContractViolation(f"{at}.delta", f"δ {request.delta} is above {privacy.delta}")
        if request.max_grad_norm > privacy.max_grad_norm:
            raise ContractViolation(f"{at}.max_grad_norm", f"{request.max_grad_norm} is above {privacy.max_grad_norm}")
        if request.epsilon > privacy.epsilon_per_run:
            raise ContractViolation(f"{at}.epsilon_per_run", f"ε {request.epsilon} is above {privacy.epsilon_per_run}")
        used = spent.get(terms.dataset_id, 0.0)
        if isinstance(used, bool) or not isinstance(used, int | float) or not math.isfinite(used) or used < 0:
            # What the ledger says cannot be read as a budget: nothing is known to be left.
            raise ContractViolation(f"{at}.epsilon_total", f"the ε spent so far is not a number ε can be taken from: "
                                    f"{used!r}")  # fmt: skip
        left = privacy.epsilon_total - used
        if request.epsilon > left:
            raise ContractViolation(f"{at}.epsilon_total", f"ε {request.epsilon} is more than is left of the budget "
                                    f"({max(left, 0.0):g} of {privacy.epsilon_total:g}; {used:g} spent)")  # fmt: skip


def check_job(contract: TrainingContract, spec: JobSpec, manifests: Sequence[tuple[DatasetRef, DatasetManifest]], *,
              spent: Mapping[str, float]) -> None:  # fmt: skip
    """Refuse ``spec`` unless it stays inside ``contract``'s terms (module docstring).

    ``manifests`` are the job's datasets' manifests, each with the reference it was read from (one per
    dataset the job names); ``spent`` maps a dataset id to the ε runs under this contract spent from it.

    Raises:
        ContractViolation: naming the first term the job breaks.
    """
    datasets = _check_datasets(contract, spec, manifests)
    _check_job_space(contract, spec)
    _check_privacy(spec, datasets, spent)
