"""``securetrain models list | verify | approve-export | export``: the model registry in blob storage.

``verify`` checks a version's whole provenance chain (see docs/models.md) and exits 0, or 3 naming the
link that failed. ``approve-export`` is the data owner's: it signs an approval for a recipient key.
``export`` has the TEE re-seal a version for that recipient under that approval; the TEE records it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import secrets
from collections.abc import Callable
from pathlib import Path

from securetrain.core.audit.checkpoints import load_signing_key
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.audit.tee_log import check_holds, collect_tee_logs
from securetrain.core.cli.options import add_container_option
from securetrain.core.cli.settings import CommandSettings
from securetrain.core.cli.token_check import add_token_options, authority_keys
from securetrain.core.errors import ConfigurationError
from securetrain.core.governance.budget import check_holds as check_ledger_holds
from securetrain.core.governance.budget import read_contract_ledger
from securetrain.core.governance.contract import TrainingContract, contract_release_policy
from securetrain.core.governance.store import CONTRACTS_CONTAINER, ContractStore
from securetrain.core.fsutil import atomic_output
from securetrain.core.model_export import EXPORT_AUDIT_LOG, approve_export
from securetrain.core.model_provenance import (
    ProvenanceInvalid,
    SigningKeys,
    recipient_key,
    verify_provenance,
)
from securetrain.core.model_registry import REGISTRY_CONTAINER, ModelRegistry
from securetrain.core.sealed import content_digest, inspect
from securetrain.core.signed_documents import load_public_key
from securetrain.core.storage import BlobStore


def _list(args: argparse.Namespace) -> int:
    with BlobStore.from_settings(CommandSettings.load(args.settings)) as store:
        registry = ModelRegistry(store, args.container)
        versions = registry.versions(args.name)
        if not versions:
            print(f"model {args.name} has no versions in {args.container}")
            return 0
        print(f"{'version':>7}  {'registered':<20}  {'run':<40}  sealed sha256")
        for number in versions:
            manifest = registry.get(args.name, number).manifest
            print(f"{number:>7}  {manifest.get('registered_at', '-'):<20}  "
                  f"{manifest.get('lineage', {}).get('run_id', '-'):<40}  {manifest['sealed_model']['sha256']}")  # fmt: skip
    return 0


def _verify(args: argparse.Namespace) -> int:
    settings = CommandSettings.load(args.settings)
    pipeline_key = load_public_key(args.public_key, "the pipeline public key")
    with BlobStore.from_settings(settings) as store:
        registry = ModelRegistry(store, args.container)
        version = registry.get(args.name, args.version)
        stored_sha256 = content_digest(registry.sealed_model(version))
        contract = _trained_under(version.manifest, store)
    # A model trained under a contract was released its keys under the contract's own policy, which every party
    # can rebuild from the signed contract; any other model under the deployment's approved policy.
    if contract is not None and args.release_policy is None:
        policy = contract_release_policy(contract)
    else:
        policy = settings.approved_release_policy(args.release_policy)
    try:
        checked = verify_provenance(
            version.manifest, stored_sha256, pipeline_key=pipeline_key, release_policy=policy,
            keys_for=authority_keys(args, settings),
        )  # fmt: skip
        # The statement (verified above) names how far the TEE's event log reached: the run's audit log must
        # still hold every TEE event up to there, none removed, none rolled back.
        run_id, head = version.manifest["lineage"]["run_id"], version.manifest["provenance"]["statement"]["tee_log_head"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProvenanceInvalid(f"the manifest of {args.name} version {args.version} is malformed: {exc!r}") from None
    with BlobAuditStore.from_settings(settings, run_id, container=args.audit_container) as audit_store:
        events = [entry.event for entry in AuditLog(audit_store).entries()]
    check_holds(collect_tee_logs(events), head, f"the statement of {args.name} version {args.version}")
    checked.append(f"the audit log of run {run_id} holds the TEE's events up to the head it signed "
                   f"({head['log_id']} entry {head['seq']})")  # fmt: skip
    governance = version.manifest["provenance"]["statement"].get("governance")
    if contract is not None and isinstance(governance.get("privacy"), dict):
        checked.append(_ledger_holds(settings, contract, governance["privacy"], authority_keys(args, settings)))
    for line in checked:
        print(f"ok  {line}")
    print(f"{args.name} version {args.version}: provenance verified")
    return 0


def _trained_under(manifest: dict, store: BlobStore) -> TrainingContract | None:
    """The contract the TEE's statement says the model was trained under, read from storage (its bytes must hash
    to the digest the statement names); None for a model trained under none."""
    governance = manifest.get("provenance", {}).get("statement", {}).get("governance")
    if governance is None:
        return None
    if not isinstance(governance, dict) or not isinstance(governance.get("contract"), str):
        raise ProvenanceInvalid("the statement's governance names no contract digest")
    return ContractStore(store, CONTRACTS_CONTAINER).read(governance["contract"]).contract


def _ledger_holds(
    settings: CommandSettings, contract: TrainingContract, privacy: dict, keys_for: Callable[[str], SigningKeys]
) -> str:
    """The privacy a DP run spent, still in its contract's budget ledger: the entry the TEE signed into the
    statement is there, unchanged (a ledger cut back would give the budget back: docs/audit.md)."""
    reference = privacy.get("ledger")
    if not isinstance(reference, dict):
        raise ProvenanceInvalid("the statement's privacy names no ledger entry")
    with BlobStore.from_settings(settings) as store:
        state = read_contract_ledger(store, contract, keys_for)
    check_ledger_holds(state, reference)
    return (f"the privacy-budget ledger of contract {contract.digest()} still holds the spend the TEE signed "
            f"(entry {reference['seq']}: ε {privacy.get('epsilon')})")


def _recipient_pem(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the recipient key {path}: {exc.strerror}") from None
    recipient_key(pem)  # a malformed key stops here, before anything is asked, signed or written
    return pem


def _approve_export(args: argparse.Namespace) -> int:
    recipient = recipient_key(_recipient_pem(args.recipient_public_key))
    expires_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=args.valid_hours)
    approval = approve_export(
        load_signing_key(args.signing_key), kek_id=args.kek_id, recipient_thumbprint=recipient.thumbprint, expires_at=expires_at
    )
    with atomic_output(args.out, mode=0o644) as out:
        out.write(json.dumps(approval, indent=2, sort_keys=True).encode())
    print(f"approved exports of models under {args.kek_id} to recipient key {recipient.thumbprint} until "
          f"{approval['expires_at']}: {args.out}")  # fmt: skip
    return 0


def _export(args: argparse.Namespace) -> int:
    pem = _recipient_pem(args.recipient_public_key)
    try:
        approval = json.loads(args.approval.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the export approval {args.approval}: {exc}") from None
    settings = CommandSettings.load(args.settings)
    with BlobStore.from_settings(settings) as store:
        registry = ModelRegistry(store, args.container)
        version = registry.get(args.name, args.version)
        # The KEK version the stored model is sealed under now: a rotation rewraps it to a newer one.
        kek_id = inspect(io.BytesIO(registry.sealed_model(version))).key.kek_id
    sealed = version.manifest["sealed_model"]
    with settings.agent() as agent:
        exported = agent.export_model(
            kek_id=kek_id, run_id=version.manifest["lineage"]["run_id"], container=version.container,
            blob=sealed["blob"], sealed_sha256=sealed["sha256"], recipient_public_key_pem=pem.decode(),
            nonce=secrets.token_urlsafe(24), approval=approval,
        )  # fmt: skip
    with atomic_output(args.out) as out:
        out.write(exported)
    details = {
        "model": args.name, "version": args.version, "sealed_sha256": sealed["sha256"],
        "recipient_thumbprint": recipient_key(pem).thumbprint, "export_sha256": hashlib.sha256(exported).hexdigest(),
        "recorded_in": f"{AUDIT_CONTAINER}/audit/{EXPORT_AUDIT_LOG}.jsonl (by the TEE)",
    }  # fmt: skip
    print(json.dumps({"out": str(args.out), **details}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "models", help="the model registry: list versions, verify provenance, export",
        description="Registered models in the storage account of the settings ($SECURETRAIN_STORAGE_ACCOUNT_URL). "
        "See docs/models.md for the provenance chain that `verify` checks.",
    )  # fmt: skip
    add_container_option(group, container=REGISTRY_CONTAINER, holds="the registry")
    commands = group.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="the versions of a model", description="List model NAME's versions.")
    listing.add_argument("name", metavar="NAME", help="the model's name")
    listing.set_defaults(handler=_list)

    verify = commands.add_parser(
        "verify", help="check a version's provenance chain; exit 3 naming the link that fails",
        description="Verify model NAME version VERSION: the stored sealed model's digest against the manifest; "
        "the pipeline's signature over the manifest; the attestation token's signature (the authority's "
        "published keys, or --attestation-jwks) and its claims against the release policy the manifest names; "
        "the TEE's signature over the model statement with the key the token attests; the statement's "
        "digests and TEE log head against the manifest; and that the run's audit log holds the TEE's events up "
        "to that head. Exits 0 if all holds, 3 naming the first link that fails.",
    )  # fmt: skip
    verify.add_argument("name", metavar="NAME", help="the model's name")
    verify.add_argument("version", metavar="VERSION", type=int, help="the version number")
    verify.add_argument(
        "--public-key", type=Path, required=True, metavar="PEM",
        help="the pipeline's model-signing public key (PEM), as its operator published it",
    )  # fmt: skip
    add_token_options(verify)  # the release policy's SHA-256 must also be the one the manifest names
    verify.add_argument(
        "--audit-container", default=AUDIT_CONTAINER,
        help=f"the container of the run's audit log (default {AUDIT_CONTAINER})",
    )  # fmt: skip
    verify.set_defaults(handler=_verify)

    approve = commands.add_parser(
        "approve-export", help="(data owner) approve exports to a recipient key: a signed approval file",
        description="The data owner's command: sign an export approval with the data owner's Ed25519 key, naming "
        "the recipient's RSA public key (by its thumbprint), the KEK whose models may go to it, and an expiry. "
        "The TEE re-seals a model only for a recipient such an approval names, checked against the data owner "
        "keys pinned in its configuration.",
    )  # fmt: skip
    approve.add_argument(
        "--recipient-public-key", type=Path, required=True, metavar="PEM",
        help="the recipient's RSA public key (PEM, at least 2048 bits)",
    )  # fmt: skip
    approve.add_argument(
        "--kek-id", required=True, metavar="URL",
        help="the versioned Key Vault key id of the KEK the model to export is sealed under now (its sealed "
        "header's kek_id, `securetrain inspect`; after a key rotation, the new version)",
    )  # fmt: skip
    approve.add_argument("--valid-hours", type=int, default=24, metavar="N", help="how long it is valid (default 24)")
    approve.add_argument(
        "--signing-key", type=Path, required=True, metavar="PEM",
        help="the data owner's Ed25519 signing key (PEM)",
    )  # fmt: skip
    approve.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the approval (JSON)")
    approve.set_defaults(handler=_approve_export)

    export = commands.add_parser(
        "export", help="re-seal a version for an approved recipient's RSA key (in the TEE), recorded by the TEE",
        description="Have the TEE re-seal model NAME version VERSION for the recipient's RSA public key and "
        "write it to --out; the recipient opens it with `securetrain unseal` and their private key. The TEE "
        "does it only under a data owner's approval for this recipient and KEK (`securetrain models "
        "approve-export`), and records the export, signed with its attested key, in audit log "
        f"{EXPORT_AUDIT_LOG} before the bytes leave it. The KEK never leaves the TEE.",
    )  # fmt: skip
    export.add_argument("name", metavar="NAME", help="the model's name")
    export.add_argument("version", metavar="VERSION", type=int, help="the version number")
    export.add_argument(
        "--recipient-public-key", type=Path, required=True, metavar="PEM",
        help="the recipient's RSA public key (PEM, at least 2048 bits)",
    )  # fmt: skip
    export.add_argument(
        "--approval", type=Path, required=True, metavar="JSON",
        help="the data owner's export approval for this recipient (from `securetrain models approve-export`)",
    )  # fmt: skip
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the sealed model")
    export.set_defaults(handler=_export)
