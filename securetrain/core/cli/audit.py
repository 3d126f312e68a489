"""``securetrain audit verify | show | fingerprint``: an audit log in blob storage ($SECURETRAIN_STORAGE_ACCOUNT_URL).

``verify`` checks the hash chain and the checkpoints against the pinned audit key, the TEE's own signed
event logs in it against their attestation tokens, and that the log still holds the TEE's events up to
the head each of the run's registered models names; it exits 0, or 3 naming the first thing that failed
(2 if no audit key is pinned). ``show`` lists the entries. See docs/audit.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from securetrain.core.audit.chain import AuditEntry
from securetrain.core.audit.checkpoints import PINNED_KEY_VARIABLE, check_pinned, key_fingerprint, pinned_fingerprint
from securetrain.core.audit.errors import AuditChainBroken
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.audit.trail import attested_head, verify_trail
from securetrain.core.cli.options import add_container_option
from securetrain.core.cli.settings import CommandSettings
from securetrain.core.cli.token_check import add_token_options, token_check
from securetrain.core.model_registry import REGISTRY_CONTAINER, ModelRegistry
from securetrain.core.signed_documents import load_public_key
from securetrain.core.storage import BlobStore


def _verify(args: argparse.Namespace) -> int:
    pinned = pinned_fingerprint(args.audit_key_fingerprint, os.environ)  # before anything else: no pin, no verdict
    public_key = load_public_key(args.public_key, "the audit public key")
    check_pinned(public_key, pinned)  # the key offered counts only if it is the pinned one
    settings = CommandSettings.load(args.settings)
    check_token = token_check(args, settings)
    with BlobAuditStore.from_settings(settings, args.log, container=args.container) as store:
        entries, checkpoints = store.read_all().lines, store.read_checkpoints()
    with BlobStore.from_settings(settings) as blobs:
        versions = ModelRegistry(blobs, args.registry_container).versions_of_run(args.log)
    # Each registered model of the run names, in its TEE-signed statement, how far the TEE's log reached.
    anchors = [
        (f"model {version.name} version {version.version}", attested_head(version.manifest.get("provenance") or {}, check_token))
        for version in versions
    ]
    verdict = verify_trail(
        entries, checkpoints, public_key, check_token=check_token, anchors=anchors,
        allow_unsigned_tail=args.allow_unsigned_tail,
    )  # fmt: skip
    for line in verdict.lines():
        print(line)
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    print(key_fingerprint(load_public_key(args.public_key, "the audit public key")))
    return 0


def _describe(position: int, line: bytes) -> str:
    try:
        entry = AuditEntry.parse(line, position)
    except AuditChainBroken as exc:
        return f"{position:>6}  MALFORMED: {exc}"
    event = entry.event
    details = json.dumps(event.details, sort_keys=True, ensure_ascii=False)
    run = event.run_id or "-"
    return f"{entry.seq:>6}  {event.time}  {event.kind.value:<18} {event.source.value:<11} {run}  {details}"


def _show(args: argparse.Namespace) -> int:
    with BlobAuditStore.from_settings(CommandSettings.load(args.settings), args.log, container=args.container) as store:
        lines = store.read_all().lines
    if args.json:
        for line in lines:
            print(line.decode("utf-8", errors="replace"))
        return 0
    print(f"{'seq':>6}  {'time':<27}  {'kind':<18} {'source':<11} run  details")
    for position, line in enumerate(lines):
        print(_describe(position, line))
    print(f"{len(lines)} entries (listing only: run `securetrain audit verify --log {args.log}` to check them)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "audit", help="the tamper-evident audit log: verify it, show it",
        description="Audit logs kept as append blobs in the storage account of the settings "
        "($SECURETRAIN_STORAGE_ACCOUNT_URL). See docs/audit.md for the format and what verification proves.",
    )  # fmt: skip
    add_container_option(group, container=AUDIT_CONTAINER, holds="audit logs")
    commands = group.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)

    verify = commands.add_parser(
        "verify", help="check a log against the pinned audit key and the TEE's signatures; name the first fault",
        description="Verify audit log NAME: every checkpoint's Ed25519 signature with the pinned audit key, every "
        "entry's canonical form and link to the one before, every signed head against the entries, that the "
        "last entry is covered by a checkpoint (or by the TEE's signature); every TEE event log in it "
        "(complete, linked, each head signed by a TEE key that an attestation token in the log attests, each "
        "token signed by the authority the release policy trusts and satisfying it); and, for each model "
        "registered from run NAME, that the log holds the TEE's events up to the head its TEE-signed "
        "statement names. Exits 0 if all holds, 3 naming the first fault, 2 if no audit key is pinned.",
    )  # fmt: skip
    verify.add_argument("--log", required=True, metavar="NAME", help="the log's name (audit/NAME.jsonl)")
    verify.add_argument(
        "--audit-key-fingerprint", default=None, metavar="SHA256HEX",
        help=f"the pinned audit public key: SHA-256 of its raw bytes (default: ${PINNED_KEY_VARIABLE}); required",
    )  # fmt: skip
    verify.add_argument(
        "--public-key", type=Path, required=True, metavar="PEM",
        help="the audit public key (PEM) to check checkpoints with; it must have the pinned fingerprint",
    )  # fmt: skip
    verify.add_argument(
        "--registry-container", default=REGISTRY_CONTAINER,
        help=f"the model registry to find the run's models in (default {REGISTRY_CONTAINER})",
    )  # fmt: skip
    add_token_options(verify)
    verify.add_argument(
        "--allow-unsigned-tail", action="store_true",
        help="accept entries after the last checkpoint (a log still being written); they are reported as unsigned",
    )  # fmt: skip
    verify.set_defaults(handler=_verify)

    fingerprint = commands.add_parser(
        "fingerprint", help="print an audit public key's fingerprint, the value to pin",
        description="Print the SHA-256 of an audit public key (--public-key PEM): the value to pin with "
        f"--audit-key-fingerprint or ${PINNED_KEY_VARIABLE}. Take it where the key is made, not from a copy an "
        "attacker could have replaced.",
    )  # fmt: skip
    fingerprint.add_argument("--public-key", type=Path, required=True, metavar="PEM", help="the audit public key")
    fingerprint.set_defaults(handler=_fingerprint)

    show = commands.add_parser(
        "show", help="list a log's entries (no verification)",
        description="Print the entries of audit log NAME, one per line: seq, time, kind, source, run id and "
        "details. It does not verify them: use `securetrain audit verify`.",
    )  # fmt: skip
    show.add_argument("--log", required=True, metavar="NAME", help="the log's name (audit/NAME.jsonl)")
    show.add_argument("--json", action="store_true", help="print the stored JSON lines as they are")
    show.set_defaults(handler=_show)
