"""``securetrain contract propose | sign | verify | show | revoke | publish | budget``: a multi-party training contract.

Every party runs these on its own machine with its own key (docs/governance.md): ``propose`` completes a terms
file into an unsigned contract and prints its digest, ``sign`` adds one party's signature, ``verify`` exits 0
only when every party signed the same digest, it is in force and no revocation given stands (3 naming the
missing or bad signature, the revocation or the validity; 2 for a bad file or argument), ``show`` summarizes it,
``revoke`` writes a party's signed revocation. ``publish`` puts a signed contract, or a revocation, where the TEE
reads it (storage, as the identity of ``--settings``); ``budget`` shows a contract's privacy-budget ledger,
verified entry by entry.
"""

from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.approved_release_policies import reference_values_from_json
from securetrain.core.cli.settings import CommandSettings
from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.fsutil import atomic_output
from securetrain.core.governance.budget import format_budget, read_contract_ledger
from securetrain.core.governance.contract import (
    MAX_CONTRACT_BYTES,
    ContractInvalid,
    TrainingContract,
    parse_time,
)
from securetrain.core.governance.in_force import verify_contract
from securetrain.core.governance.proposal import propose
from securetrain.core.governance.revocation import MAX_REVOCATION_BYTES, revoke
from securetrain.core.governance.signatures import SignedContract, check_signature, sign
from securetrain.core.governance.store import CONTRACTS_CONTAINER, ContractStore
from securetrain.core.json_input import JsonInputError, read_json_object
from securetrain.core.model_provenance import published_keys
from securetrain.core.signed_documents import load_public_key
from securetrain.core.storage import BlobStore

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        with path.open("rb") as file:
            body = file.read(limit + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(body) > limit:
        raise ConfigurationError(f"{what} {path} is larger than {limit} bytes")
    return body


def _signed_contract(path: Path) -> SignedContract:
    try:
        return SignedContract.from_bytes(_read(path, "the contract", MAX_CONTRACT_BYTES))
    except ContractInvalid as exc:
        raise ConfigurationError(f"{path}: {exc}") from None


def _write(path: Path, body: bytes) -> None:
    with atomic_output(path, mode=0o644) as out:
        out.write(body)


def _private_key(path: Path) -> Ed25519PrivateKey:
    """A party's Ed25519 signing key: an unencrypted PKCS #8 PEM file."""
    try:
        key = serialization.load_pem_private_key(_read(path, "the signing key", 16 << 10), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} holds a {type(key).__name__}; a party signs with an Ed25519 key")
    return key


def _pairs(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values or ():
        name, separator, rest = value.partition("=")
        if not separator or not name or not rest:
            raise ConfigurationError(f"{option} {value!r}: give NAME=VALUE")
        pairs.append((name, rest))
    return pairs


def _unique(pairs: list[tuple[str, str]], option: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in found:
            raise ConfigurationError(f"{option} names {name!r} twice")
        found[name] = value
    return found


def _time(value: str) -> datetime.datetime:
    """A command-line time: RFC 3339 with a zone (``Z`` or an offset)."""
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no time zone; end it with Z or an offset")
    return moment


def _propose(args: argparse.Namespace) -> int:
    try:
        terms = read_json_object(_read(args.terms, "the terms file", MAX_CONTRACT_BYTES), max_bytes=MAX_CONTRACT_BYTES,
                                 what=f"the terms file {args.terms}")  # fmt: skip
    except JsonInputError as exc:
        raise ConfigurationError(str(exc)) from None
    party_keys = {party: load_public_key(Path(pem), f"the signing key of {party}")
                  for party, pem in _unique(_pairs(args.party_key, "--party-key"), "--party-key").items()}  # fmt: skip
    versions: dict[str, list[tuple[str, str]]] = {}
    for dataset, pinned in _pairs(args.dataset_version, "--dataset-version"):
        version, _, digest = pinned.rpartition(":")
        if not version or not _SHA256.fullmatch(digest):
            raise ConfigurationError(f"--dataset-version {dataset}={pinned}: give ID=VERSION:MANIFEST_SHA256 (64 hex)")
        versions.setdefault(dataset, []).append((version, digest))
    recipients = {party: _read(Path(pem), f"the model key of {party}", 16 << 10).decode("ascii", "replace")
                  for party, pem in _unique(_pairs(args.recipient_key, "--recipient-key"), "--recipient-key").items()}
    workloads = [reference_values_from_json(_read(path, "the reference values", 1 << 20)) for path in args.workload or ()]
    if args.valid_for is not None and args.valid_for < 1:
        raise ConfigurationError("--valid-for: give a number of days, at least 1")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    expires = now + datetime.timedelta(days=args.valid_for) if args.valid_for is not None else args.expires
    proposal = propose(
        terms, party_keys=party_keys, dataset_versions=versions, keks=_unique(_pairs(args.kek, "--kek"), "--kek"),
        recipient_keys=recipients, not_before=now if expires is not None else None, expires=expires,
        workloads=workloads,
    )  # fmt: skip
    _write(args.out, proposal.to_bytes())
    print(proposal.contract.digest())
    return 0


def _sign(args: argparse.Namespace) -> int:
    signed = sign(_signed_contract(args.file), args.party, _private_key(args.key))
    _write(args.out or args.file, signed.to_bytes())
    print(f"{args.party} signed contract {signed.contract.digest()}")
    return 0


def _revocations(paths: list[Path] | None) -> dict[str, str]:
    return {str(path): _read(path, "the revocation", MAX_REVOCATION_BYTES).decode("ascii", "replace").strip()
            for path in paths or ()}  # fmt: skip


def _verify(args: argparse.Namespace) -> int:
    signed = _signed_contract(args.file)
    verified = verify_contract(signed, _revocations(args.revocation), args.at or datetime.datetime.now(datetime.UTC))
    print(f"contract {verified.digest} is in force: signed by {', '.join(verified.signers)}; "
          f"valid until {signed.contract.validity.expires}")  # fmt: skip
    return 0


def _status(signed: SignedContract, party: str) -> str:
    signature = signed.signature(party)
    if signature is None:
        return "not signed"
    try:
        check_signature(signed.contract, signature)
    except SecurityViolation as exc:
        return f"REFUSED ({exc})"
    return "signed"


def _job_space_lines(contract: TrainingContract) -> list[str]:
    space = contract.job_space
    lines = []
    for model in space.models:
        bounds = [f"{name} {bound.describe()}" for name, bound in model.params.items()]
        lines.append(f"  model {model.name}: {', '.join(bounds) or 'no parameters may be set'}")
    lines += [f"  epochs ≤ {space.max_epochs}; batch size {space.batch_size.min}..{space.batch_size.max}; "
              f"learning rate ≤ {space.learning_rate.max:g}; optimizers {', '.join(space.optimizers)}",
              f"  expectation types: {', '.join(space.expectation_types) or 'none (no suite)'}"]  # fmt: skip
    return lines


def _show(args: argparse.Namespace) -> int:
    signed = _signed_contract(args.file)
    contract = signed.contract
    now = datetime.datetime.now(datetime.UTC)
    validity = contract.validity
    state = "in its validity" if contract.in_validity(now) else (
        "not yet valid" if now < parse_time(validity.not_before) else "expired")  # fmt: skip
    lines = [f"contract {contract.contract_id}", f"digest   {contract.digest()}", f"purpose  {contract.purpose}",
             f"validity {validity.not_before} .. {validity.expires} ({state} now)", "parties:"]  # fmt: skip
    lines += [f"  {party.id:<24} {party.role:<15} key {party.signing_key.key_id[:16]}…  {_status(signed, party.id)}"
              for party in contract.parties]  # fmt: skip
    lines.append("datasets:")
    for dataset in contract.datasets:
        privacy = dataset.privacy
        lines.append(f"  {dataset.dataset_id} (owner {dataset.owner}, KEK {dataset.kek})")
        lines += [f"    version {pinned.version}: manifest {pinned.manifest_sha256}" for pinned in dataset.versions]
        lines.append(f"    DP-SGD {'required' if privacy.required else 'optional'}: ε ≤ {privacy.epsilon_per_run:g} per "
                     f"run, {privacy.epsilon_total:g} in all; δ ≤ {privacy.delta:g}; clipping ≤ {privacy.max_grad_norm:g}; "
                     f"noise ≥ {privacy.noise_multiplier_min:g}; accountants {', '.join(privacy.accountants)}")  # fmt: skip
    lines.append("workloads:")
    lines += [f"  {workload.platform} (attested by {workload.attestation_authority})" for workload in contract.workloads]
    lines.append("job space:")
    lines += _job_space_lines(contract)
    outputs = contract.outputs
    lines.append(f"outputs: model sealed for {', '.join(r.party for r in outputs.recipients)}; metrics may leave: "
                 f"{'yes' if outputs.metrics_may_leave else 'no'}; export allowed: {'yes' if outputs.export_allowed else 'no'}")
    print("\n".join(lines))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    signed = _signed_contract(args.file)
    token = revoke(signed.contract, args.party, _private_key(args.key), reason=args.reason,
                   at=datetime.datetime.now(datetime.UTC))  # fmt: skip
    _write(args.out, (token + "\n").encode())
    print(f"{args.party} revoked contract {signed.contract.digest()}: give {args.out} to every verifier")
    return 0


def _publish(args: argparse.Namespace) -> int:
    signed = _signed_contract(args.file)
    settings = CommandSettings.load(args.settings)
    with BlobStore.from_settings(settings) as store:
        contracts = ContractStore(store, args.container)
        if args.revocation is None:
            digest = contracts.publish(signed)
            print(f"contract {digest} published at {args.container}/{digest}/contract.json")
        else:
            digest = signed.contract.digest()
            token = _read(args.revocation, "the revocation", MAX_REVOCATION_BYTES).decode("ascii", "replace").strip()
            print(f"revocation of contract {digest} published at {args.container}/{contracts.add_revocation(digest, token)}")
    return 0


def _budget(args: argparse.Namespace) -> int:
    signed = _signed_contract(args.file)
    contract = signed.contract
    settings = CommandSettings.load(args.settings)
    with BlobStore.from_settings(settings) as store:
        state = read_contract_ledger(store, contract, published_keys(settings.tls_verify))
    print(format_budget(state, {dataset.dataset_id: dataset.privacy.epsilon_total for dataset in contract.datasets}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "contract", help="the multi-party training contract: propose, sign, verify, show, revoke",
        description="A training contract every party (data owners, model consumers) signs; see docs/governance.md.",
    )  # fmt: skip
    commands = group.add_subparsers(dest="contract_command", metavar="COMMAND", required=True)

    proposal = commands.add_parser(
        "propose", help="complete a terms file into an unsigned contract; print its digest",
        description="Build the contract from TERMS, filling in what the terms leave out: the parties' keys, the "
        "datasets' pinned versions and KEKs, the recipients' model keys, the approved workloads and the validity. "
        "A value given both in the terms and here is refused. Writes the contract with no signatures to --out "
        "and prints its digest.",
    )  # fmt: skip
    proposal.add_argument("--terms", type=Path, required=True, metavar="FILE", help="the terms (JSON)")
    proposal.add_argument("--party-key", action="append", metavar="ID=PEM_FILE",
                          help="a party's Ed25519 public key (PEM); repeat for each party")  # fmt: skip
    proposal.add_argument("--dataset-version", action="append", metavar="ID=VERSION:MANIFEST_SHA256",
                          help="pin a dataset version by the SHA-256 of its signed manifest (without signatures); "
                          "repeatable")  # fmt: skip
    proposal.add_argument("--kek", action="append", metavar="ID=URL",
                          help="a dataset's KEK: https://VAULT/keys/NAME (a version is allowed; only the name counts)")
    proposal.add_argument("--recipient-key", action="append", metavar="PARTY=PEM_FILE",
                          help="the RSA public key (PEM) the model is sealed to for a model consumer")
    proposal.add_argument("--workload", type=Path, action="append", metavar="FILE",
                          help="an approved workload's reference values (JSON, with \"platform\"); repeatable")
    validity = proposal.add_mutually_exclusive_group()
    validity.add_argument("--valid-for", type=int, metavar="DAYS", help="in force from now for DAYS days")
    validity.add_argument("--expires", type=_time, metavar="TIME", help="in force from now until TIME (RFC 3339)")
    proposal.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the contract")
    proposal.set_defaults(handler=_propose)

    signing = commands.add_parser(
        "sign", help="add a party's signature", description="Sign the contract in FILE as party --party with its "
        "Ed25519 key (PKCS #8 PEM); the key must be the one the contract gives that party.",
    )  # fmt: skip
    signing.add_argument("file", type=Path, metavar="FILE")
    signing.add_argument("--party", required=True, metavar="ID")
    signing.add_argument("--key", type=Path, required=True, metavar="PEM", help="the party's private signing key")
    signing.add_argument("--out", type=Path, metavar="FILE", help="write here instead of replacing FILE")
    signing.set_defaults(handler=_sign)

    verify = commands.add_parser(
        "verify", help="exit 0 only if every party signed and the contract is in force",
        description="Check every party's signature, the validity (now or --at) and each revocation given. Exits 0 "
        "if the contract is in force, 3 naming the missing or bad signature, the revocation or the validity term, "
        "2 if a file or argument is bad. A revocation that cannot be verified counts as a refusal.",
    )  # fmt: skip
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.add_argument("--revocation", type=Path, action="append", metavar="FILE", help="a revocation (repeatable)")
    verify.add_argument("--at", type=_time, metavar="TIME", help="check validity at TIME (RFC 3339) instead of now")
    verify.set_defaults(handler=_verify)

    show = commands.add_parser("show", help="summarize the contract and who signed it",
                               description="Print the digest, parties and their signatures, datasets, terms and validity.")
    show.add_argument("file", type=Path, metavar="FILE")
    show.set_defaults(handler=_show)

    revocation = commands.add_parser(
        "revoke", help="write a party's signed revocation of the contract",
        description="Revoke the contract in FILE as party --party: a compact JWS signed with the party's key, for "
        "the verifiers (docs/governance.md). A revocation cannot be withdrawn.",
    )  # fmt: skip
    revocation.add_argument("file", type=Path, metavar="FILE")
    revocation.add_argument("--party", required=True, metavar="ID")
    revocation.add_argument("--key", type=Path, required=True, metavar="PEM", help="the party's private signing key")
    revocation.add_argument("--reason", default="", metavar="TEXT", help="why (one line, at most 500 characters)")
    revocation.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the revocation")
    revocation.set_defaults(handler=_revoke)

    publication = commands.add_parser(
        "publish", help="put the signed contract (or a revocation of it) where the TEE reads it",
        description="Store the contract in FILE, which every party must have signed, at CONTAINER/<digest>/contract.json "
        "(or, with --revocation, a party's revocation beside it), as the identity --settings names. Publishing the "
        "same contract again changes nothing; a revocation is checked before it is stored.",
    )  # fmt: skip
    publication.add_argument("file", type=Path, metavar="FILE")
    publication.add_argument("--revocation", type=Path, metavar="JWS_FILE", help="publish this revocation of it instead")
    publication.add_argument("--container", default=CONTRACTS_CONTAINER, help=f"default {CONTRACTS_CONTAINER}")
    publication.set_defaults(handler=_publish)

    budget = commands.add_parser(
        "budget", help="show the contract's privacy budget: spent, reserved and left per dataset",
        description="Read the privacy-budget ledger of the contract in FILE from storage, verify every entry (hash "
        "chain, the TEE's signature, the attestation token that attests its key, held to the contract's own release "
        "policy) and print per dataset the budget, ε spent, ε reserved by runs not settled, and ε left.",
    )  # fmt: skip
    budget.add_argument("file", type=Path, metavar="FILE")
    budget.set_defaults(handler=_budget)
