"""The training contract: the document every party of a confidential training signs (docs/governance.md).

A :class:`TrainingContract` names the parties (data owners and model consumers, each with the Ed25519 key it
signs with), the datasets (pinned to the digests of their owners' signed manifests, the KEK each is sealed
to, and the differential-privacy terms each owner requires), the approved workloads (the reference values
of :mod:`securetrain.core.approved_release_policies`), the job space a run must stay inside, who receives the
model, and when the contract is valid. It is strict like every contract between zones
(:mod:`securetrain.core.contracts.base`); the rules across fields are checked when it is read.

Its identity is :meth:`TrainingContract.digest`: SHA-256 of the RFC 8785 canonical JSON of its JSON form.
That form is a function of the validated model, so two spellings of the same terms (key order, whitespace,
a set written in another order) are the same contract, and a change to any term is another one.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import re
from typing import Annotated, Any, Literal

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from securetrain.core.approved_release_policies import (
    AciReferenceValues,
    AzureCvmReferenceValues,
    ReferenceValues,
    SnpReferenceValues,
    approved_release_policy,
)
from securetrain.core.release_policy import ReleasePolicy, require_documented
from securetrain.core.contracts.base import (
    Contract,
    DocumentInvalid,
    Frozen,
    Items,
    Omittable,
    first_error,
    matching,
    refusal,
)
from securetrain.core.contracts.job_spec import SHA256_HEX, ModelName, ParamValue
from securetrain.core.sealed.kek import MIN_RSA_BITS
from securetrain.core.suite_policy import RULES

SCHEMA = "securetrain.contract/v1"
#: A contract is a few kilobytes; the limit bounds what a reader parses before it knows it is one.
MAX_CONTRACT_BYTES = 256 << 10

#: A label: lowercase letters, digits and single inner hyphens, 1-63 characters (a party, a dataset, a contract).
SLUG = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
#: A dataset version, as onboarding names it (``<dataset>/<version>/manifest.json``).
VERSION = r"(?!latest$)[A-Za-z0-9._-]{1,64}"
#: A Key Vault key URL, with or without a version: https://VAULT/keys/NAME[/VERSION].
KEK_URL = r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/keys/[A-Za-z0-9-]{1,127}(/[A-Za-z0-9]{1,64})?"
#: RFC 3339 in UTC, to the second: one spelling per instant, so the digest does not depend on how it was written.
TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"

Slug = matching(SLUG, "Lowercase letters, digits and single inner hyphens, 1-63 characters.")
Version = matching(VERSION, "A concrete dataset version: letters, digits and ._-, 1-64 characters (not 'latest').")
KekUrl = matching(KEK_URL, "A Key Vault key URL: https://VAULT/keys/NAME, optionally /VERSION.")
Sha256Hex = matching(SHA256_HEX, "A SHA-256 digest, 64 lowercase hex digits.")
_PrintableText = matching(r"[^\x00-\x08\x0b-\x1f\x7f]*", "Text without control characters (newlines and tabs allowed).")


class ContractInvalid(DocumentInvalid):
    """A contract (or a proposal's terms) is malformed; ``field`` is the dotted path of what is wrong."""

    document = "contract"


def _check_time(value: str) -> str:
    try:
        datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise refusal(f"{value!r} is not a date and time") from None
    return value


Timestamp = Annotated[
    matching(TIMESTAMP, "RFC 3339 in UTC to the second, e.g. 2026-01-31T12:00:00Z."), AfterValidator(_check_time)
]


def parse_time(value: str) -> datetime.datetime:
    """A :data:`Timestamp` as an aware UTC datetime."""
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def format_time(moment: datetime.datetime) -> str:
    """``moment`` (aware) as a :data:`Timestamp`; a fraction of a second is dropped."""
    if moment.tzinfo is None:
        raise ValueError("a contract time needs a time zone")
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _base64url(value: str) -> bytes:
    """Unpadded base64url (RFC 7515 section 2), the only spelling of its bytes (JWK ``x``)."""
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise refusal("is not base64url") from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != value:
        raise refusal("is not canonical unpadded base64url")
    return decoded


def _ed25519_x(value: str) -> str:
    if len(_base64url(value)) != 32:
        raise refusal("an Ed25519 public key is 32 bytes")
    return value


class SigningKey(Contract):
    """A party's Ed25519 public key as an OKP JWK (RFC 8037): what its signatures verify against."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: Annotated[str, Field(min_length=43, max_length=43), AfterValidator(_ed25519_x)]

    @classmethod
    def of(cls, key: Ed25519PublicKey | Ed25519PrivateKey) -> SigningKey:
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(kty="OKP", crv="Ed25519", x=base64.urlsafe_b64encode(raw).rstrip(b"=").decode())

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(_base64url(self.x))

    @property
    def key_id(self) -> str:
        """SHA-256 of the raw key, hex: how :mod:`securetrain.core.signed_documents` names it (a manifest's ``key_id``)."""
        return hashlib.sha256(_base64url(self.x)).hexdigest()


class Party(Contract):
    """A party: a data owner (brings a dataset, holds its KEK) or a model consumer (receives the model)."""

    id: Slug
    role: Literal["data-owner", "model-consumer"]
    signing_key: SigningKey


class PinnedVersion(Contract):
    """A dataset version the contract covers: the SHA-256 of its owner's signed manifest, as
    :func:`securetrain.core.signed_documents.signing_bytes` gives it (the manifest without its signatures)."""

    version: Version
    manifest_sha256: Sha256Hex


_Epsilon = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]


def _unique_items(what: str) -> Any:
    def check(items: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(items)) != len(items):
            raise refusal(f"names {what} twice")
        return items

    return AfterValidator(check)


class PrivacyTerms(Contract):
    """What a data owner requires of DP-SGD on its dataset; bounds on every knob a job's privacy request turns.

    ``noise_multiplier_min`` is a floor on the noise the trainer computes for the requested ε (the job does not
    name the noise): the TEE refuses to train with less.
    """

    required: bool
    epsilon_per_run: _Epsilon
    #: The dataset's whole budget: what all runs under this contract may spend together (the TEE's ledger).
    epsilon_total: Annotated[float, Field(gt=0, le=10000, allow_inf_nan=False)]
    #: The largest δ a run may ask for.
    delta: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    #: The largest per-sample clipping norm a run may ask for.
    max_grad_norm: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
    noise_multiplier_min: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]
    accountants: Annotated[Items[Literal["prv", "rdp"]], Field(min_length=1), _unique_items("an accountant")]

    @model_validator(mode="after")
    def _budget(self) -> PrivacyTerms:
        if self.epsilon_per_run > self.epsilon_total:
            raise refusal(f"is more than epsilon_total ({self.epsilon_total})", "epsilon_per_run")
        return self


class DatasetTerms(Contract):
    """A dataset the contract covers: its owner, the versions it pins, its KEK and its privacy terms.

    ``kek`` names the Key Vault key its data is sealed to; only vault and key name count when a manifest is
    compared with it, since a rotation makes new versions of the same key.
    """

    dataset_id: Slug
    owner: Slug
    versions: Annotated[Items[PinnedVersion], Field(min_length=1, max_length=64)]
    kek: KekUrl
    privacy: PrivacyTerms


_Number = Annotated[int | float, Field(allow_inf_nan=False)]


def canonical_value(value: Any) -> bytes:
    """A JSON value's RFC 8785 bytes: equality as JSON sees it (``true`` is not ``1``; ``1`` is ``1.0``)."""
    return rfc8785.dumps(json.loads(json.dumps(value)))


def _distinct_options(options: tuple[Any, ...]) -> tuple[Any, ...]:
    if len({canonical_value(option) for option in options}) != len(options):
        raise refusal("lists an option twice")
    return options


class ParamBound(Contract):
    """The values a model parameter may take: ``{min, max}`` for a number (or each number of a list, such as
    layer widths), or ``{one_of: [...]}`` for any value (compared as JSON values)."""

    min: Omittable[_Number]
    max: Omittable[_Number]
    one_of: Omittable[Annotated[Items[ParamValue], Field(min_length=1, max_length=64), AfterValidator(_distinct_options)]]

    @model_validator(mode="after")
    def _one_kind(self) -> ParamBound:
        if self.one_of is not None:
            if self.min is not None or self.max is not None:
                raise refusal("give either min and max, or one_of")
        elif self.min is None or self.max is None:
            raise refusal("give min and max, or one_of")
        elif self.min > self.max:
            raise refusal(f"is below min ({self.min})", "max")
        return self

    def allows(self, value: Any) -> bool:
        if self.one_of is not None:
            return canonical_value(value) in {canonical_value(option) for option in self.one_of}
        numbers = value if isinstance(value, tuple) else (value,)
        return all(not isinstance(number, bool | str) and self.min <= number <= self.max for number in numbers)

    def describe(self) -> str:
        return f"one of {list(self.one_of)}" if self.one_of is not None else f"within [{self.min:g}, {self.max:g}]"


class ModelTerms(Contract):
    """A model the job may train and the bounds of each parameter it may set; a parameter not listed may not be set."""

    name: ModelName
    params: Frozen[Annotated[dict[ModelName, ParamBound], Field(max_length=64)]] = Field(
        default={}, validate_default=True
    )


class IntRange(Contract):
    min: Annotated[int, Field(ge=1)]
    max: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min > self.max:
            raise refusal(f"is below min ({self.min})", "max")
        return self


class UpperBound(Contract):
    max: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]


def _known_expectation(name: str) -> str:
    if name not in RULES:
        raise refusal(f"{name!r} is not an expectation type the TEE runs")
    return name


class JobSpace(Contract):
    """What a job under the contract may ask for: models and their parameters, hyperparameters, the
    expectation types its suite may use (a subset of :data:`securetrain.core.suite_policy.RULES`)."""

    models: Annotated[Items[ModelTerms], Field(min_length=1, max_length=16)]
    max_epochs: Annotated[int, Field(ge=1, le=10000)]
    batch_size: IntRange
    learning_rate: UpperBound
    optimizers: Annotated[Items[Literal["adam", "sgd"]], Field(min_length=1), _unique_items("an optimizer")]
    expectation_types: Annotated[
        Items[Annotated[str, AfterValidator(_known_expectation)]], Field(max_length=len(RULES)),
        _unique_items("an expectation type"),
    ]  # fmt: skip

    @model_validator(mode="after")
    def _distinct_models(self) -> JobSpace:
        names = [model.name for model in self.models]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise refusal(f"names model {name!r} twice", "models", index, "name")
        return self


def _rsa_public_pem(value: str) -> str:
    try:
        key = serialization.load_pem_public_key(value.encode())
    except (ValueError, UnicodeEncodeError) as exc:
        raise refusal(f"is not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise refusal(f"is a {type(key).__name__}; the model is sealed to an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise refusal(f"has {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    return value


class Recipient(Contract):
    """A model consumer and the RSA public key the final model is sealed to for it."""

    party: Slug
    public_key: Annotated[str, Field(max_length=16384), AfterValidator(_rsa_public_pem)]


class Outputs(Contract):
    """What leaves the TEE: the sealed model, to these recipients; aggregate metrics and exports if allowed."""

    recipients: Annotated[Items[Recipient], Field(min_length=1, max_length=16)]
    metrics_may_leave: bool
    export_allowed: bool


class Validity(Contract):
    """The contract is in force from ``not_before`` (included) until ``expires`` (excluded)."""

    not_before: Timestamp
    expires: Timestamp

    @model_validator(mode="after")
    def _ordered(self) -> Validity:
        if parse_time(self.expires) <= parse_time(self.not_before):
            raise refusal(f"must be after not_before ({self.not_before})", "expires")
        return self


_PLATFORMS: dict[str, type[BaseModel]] = {
    model.model_fields["platform"].default: model
    for model in (SnpReferenceValues, AzureCvmReferenceValues, AciReferenceValues)
}


def _workload(value: Any) -> ReferenceValues:
    """A platform's reference values, read as their own JSON document (a set is a JSON array there)."""
    if isinstance(value, tuple(_PLATFORMS.values())):
        return value
    if not isinstance(value, dict):
        raise refusal("must be an object of reference values")
    platform = value.get("platform")
    model = _PLATFORMS.get(platform) if isinstance(platform, str) else None
    if model is None:
        raise refusal(f"must be one of {', '.join(_PLATFORMS)}", "platform")
    try:
        return model.model_validate_json(json.dumps(value, allow_nan=False))
    except ValidationError as exc:
        field, reason = first_error(exc)
        raise refusal(reason, *_path(field)) from None
    except ValueError as exc:
        raise refusal(str(exc)) from None


def _path(field: str) -> tuple[str | int, ...]:
    """A dotted path of :func:`first_error` back into its parts (``a[0].b`` -> ``a, 0, b``)."""
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", field))


def workload_json(value: ReferenceValues) -> dict[str, Any]:
    """Its JSON form with every set as a sorted array, so the contract's digest does not depend on set order."""
    return {key: sorted(item) if isinstance(item, frozenset) else item for key, item in value.model_dump().items()}


#: An approved workload on one platform: the reference values its KEK release policies are built from.
Workload = Annotated[
    ReferenceValues,
    PlainValidator(_workload),
    PlainSerializer(workload_json),
    WithJsonSchema({"type": "object", "description": "approved reference values of one platform"}),
]


class TrainingContract(Contract):
    """The terms every party signs (module docstring); :meth:`digest` is its identity."""

    schema_: Annotated[Literal["securetrain.contract/v1"], Field(alias="schema")]
    contract_id: Slug
    purpose: Annotated[_PrintableText, Field(min_length=1, max_length=2000)]
    parties: Annotated[Items[Party], Field(min_length=2, max_length=32)]
    datasets: Annotated[Items[DatasetTerms], Field(min_length=1, max_length=16)]
    workloads: Annotated[Items[Workload], Field(min_length=1, max_length=8)]
    job_space: JobSpace
    outputs: Outputs
    validity: Validity

    invalid = ContractInvalid

    @model_validator(mode="after")
    def _consistent(self) -> TrainingContract:
        """Rules across fields: each names the field that breaks it."""
        roles: dict[str, str] = {}
        keys: set[str] = set()
        for index, party in enumerate(self.parties):
            if party.id in roles:
                raise refusal(f"party {party.id!r} is listed twice", "parties", index, "id")
            if party.signing_key.x in keys:
                raise refusal("another party has this key; each party signs with its own", "parties", index, "signing_key")
            roles[party.id] = party.role
            keys.add(party.signing_key.x)
        for role in ("data-owner", "model-consumer"):
            if role not in roles.values():
                raise refusal(f"a contract needs at least one {role}", "parties")
        seen: set[str] = set()
        for index, dataset in enumerate(self.datasets):
            if dataset.dataset_id in seen:
                raise refusal(f"dataset {dataset.dataset_id!r} is listed twice", "datasets", index, "dataset_id")
            seen.add(dataset.dataset_id)
            if roles.get(dataset.owner) != "data-owner":
                raise refusal(f"{dataset.owner!r} is not a data-owner party of this contract", "datasets", index, "owner")
            versions = [pinned.version for pinned in dataset.versions]
            for position, version in enumerate(versions):
                if version in versions[:position]:
                    raise refusal(f"version {version!r} is pinned twice", "datasets", index, "versions", position, "version")
        platforms = [workload.platform for workload in self.workloads]
        for index, platform in enumerate(platforms):
            if platform in platforms[:index]:
                raise refusal(f"platform {platform!r} is listed twice; list every approved value in one entry",
                              "workloads", index, "platform")  # fmt: skip
        recipients: set[str] = set()
        for index, recipient in enumerate(self.outputs.recipients):
            if roles.get(recipient.party) != "model-consumer":
                raise refusal(f"{recipient.party!r} is not a model-consumer party of this contract",
                              "outputs", "recipients", index, "party")  # fmt: skip
            if recipient.party in recipients:
                raise refusal(f"{recipient.party!r} is listed twice", "outputs", "recipients", index, "party")
            recipients.add(recipient.party)
        return self

    def canonical_bytes(self) -> bytes:
        """What every party signs: the RFC 8785 canonical JSON of the contract's JSON form."""
        return rfc8785.dumps(self.to_json())

    def digest(self) -> str:
        """The contract's identity: SHA-256 of :meth:`canonical_bytes`, lowercase hex."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def party(self, party_id: str) -> Party | None:
        return next((party for party in self.parties if party.id == party_id), None)

    def dataset(self, dataset_id: str) -> DatasetTerms | None:
        return next((dataset for dataset in self.datasets if dataset.dataset_id == dataset_id), None)

    def in_validity(self, now: datetime.datetime) -> bool:
        """Whether ``now`` lies in ``[not_before, expires)``."""
        return parse_time(self.validity.not_before) <= now < parse_time(self.validity.expires)



def contract_release_policy(contract: TrainingContract, *, bound: bool = True) -> ReleasePolicy:
    """The release policy every owner binds its KEK to: any approved workload of ``contract`` (its reference values)
    enforcing this contract (its digest in the token's contract claim). Owners, Airflow's pre-check and verifiers
    build it from the signed contract alone, so they all expect the same document.

    ``bound`` False leaves the contract claim out: what the contract approves of the workload itself, which a TEE's
    answer to a bare attestation challenge (no job, so no contract enforced) is held to."""
    digest = contract.digest() if bound else None
    rules = tuple(rule for workload in contract.workloads
                  for rule in approved_release_policy(workload, contract_digest=digest).authorities)  # fmt: skip
    return require_documented(ReleasePolicy(rules))
