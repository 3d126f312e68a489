"""``securetrain audit verify | show``: an audit log in the local stack's Azurite (settings from stack.env).

``verify`` checks the hash chain and the signed checkpoints and exits 0, or 3 with a message naming the
first entry that was changed, removed, reordered or inserted; ``show`` lists the entries. See docs/audit.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securetrain.audit.chain import AuditEntry
from securetrain.audit.checkpoints import (
    load_public_key,
    load_signing_key,
    local_signing_key_path,
)
from securetrain.audit.errors import AuditChainBroken, AuditKeyError
from securetrain.audit.log import AuditLog
from securetrain.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.cli.options import add_stack_storage_options
from securetrain.errors import ConfigurationError
from securetrain.stack.envfile import read_stack_env
from securetrain.stack.layout import resolve_state_dir


def _stack_env(state_dir: Path) -> dict[str, str]:
    path = state_dir / "stack.env"
    if not path.exists():
        raise ConfigurationError(f"{path} does not exist: run `securetrain stack up` first")
    return read_stack_env(path)


def _verify(args: argparse.Namespace) -> int:
    state_dir = resolve_state_dir(args.state_dir)
    if args.public_key is not None:
        try:
            public_key = load_public_key(args.public_key.read_bytes(), str(args.public_key))
        except OSError as exc:
            raise AuditKeyError(f"cannot read the audit public key {args.public_key}: {exc.strerror}") from None
    else:
        key_path = local_signing_key_path(state_dir)
        if not key_path.exists():
            raise AuditKeyError(
                f"no --public-key given and the local stack has no audit key at {key_path}: pass the audit public "
                "key (PEM) the log was signed with"
            )
        public_key = load_signing_key(key_path).public_key()
    with BlobAuditStore.from_stack_env(_stack_env(state_dir), args.log, container=args.container) as store:
        verdict = AuditLog(store).verify(public_key, allow_unsigned_tail=args.allow_unsigned_tail)
    print(verdict.summary())
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
    env = _stack_env(resolve_state_dir(args.state_dir))
    with BlobAuditStore.from_stack_env(env, args.log, container=args.container) as store:
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
        description="Audit logs kept as append blobs in the local stack's Azurite (stack.env settings). "
        "See docs/audit.md for the format and what verification proves.",
    )  # fmt: skip
    add_stack_storage_options(group, container=AUDIT_CONTAINER, holds="audit logs")
    commands = group.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)

    verify = commands.add_parser(
        "verify", help="check a log's hash chain and signed checkpoints; name the first bad entry",
        description="Verify audit log NAME: every checkpoint's Ed25519 signature, every entry's canonical form "
        "and link to the one before, every signed head against the entries, and that the last entry is "
        "covered by a checkpoint. Exits 0 if all holds; otherwise exits 3 naming the first entry that was "
        "changed, removed, reordered or inserted, or the checkpoint that fails.",
    )  # fmt: skip
    verify.add_argument("--log", required=True, metavar="NAME", help="the log's name (audit/NAME.jsonl)")
    verify.add_argument(
        "--public-key", type=Path, default=None, metavar="PEM",
        help="the audit public key (PEM) to check checkpoints with (default: the public half of the local "
        "stack's audit key in the state directory)",
    )  # fmt: skip
    verify.add_argument(
        "--allow-unsigned-tail", action="store_true",
        help="accept entries after the last checkpoint (a log still being written); they are reported as unsigned",
    )  # fmt: skip
    verify.set_defaults(handler=_verify)

    show = commands.add_parser(
        "show", help="list a log's entries (no verification)",
        description="Print the entries of audit log NAME, one per line: seq, time, kind, source, run id and "
        "details. It does not verify them: use `securetrain audit verify`.",
    )  # fmt: skip
    show.add_argument("--log", required=True, metavar="NAME", help="the log's name (audit/NAME.jsonl)")
    show.add_argument("--json", action="store_true", help="print the stored JSON lines as they are")
    show.set_defaults(handler=_show)
