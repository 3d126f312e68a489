"""``securetrain attest verify``: check Azure evidence offline, as Azure Attestation would, and print its claims.

The document says its platform: ``report.snpCvm`` is an Azure confidential VM's (vTPM quote, HCL report,
SNP report; :mod:`securetrain.core.azure_cvm`), ``report.snpCACI`` an Azure Container Instances utility
VM's (SNP report, UVM endorsement; :mod:`securetrain.core.aci`), and a body of MAA's ``/attest/SevSnpVm``
with UVM endorsements is ACI's too. The claims are printed only when every check passed; otherwise the
exit code is 3 and the message names the check that failed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from pathlib import Path
from typing import Any

from securetrain.core.aci.verifier import verify_aci_document
from securetrain.core.azure_cvm.verifier import verify_cvm_document
from securetrain.core.errors import ConfigurationError

_EXIT_CODES = "exit codes: 0 verified (claims on stdout), 2 bad argument or unreadable file, 3 evidence refused"


def _warn(message: str) -> None:
    # On stderr, beside the JSON on stdout: the claims are valid, but say less than a reader may assume.
    print(f"securetrain attest: warning: {message}", file=sys.stderr)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc}") from None


def _nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ConfigurationError("--nonce is not base64") from None


def _verify(args: argparse.Namespace) -> int:
    try:
        document = json.loads(_read_text(args.evidence, "evidence"))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{args.evidence} is not JSON: {exc}") from None
    report = document.get("report") if isinstance(document, dict) else None
    is_cvm = isinstance(report, dict) and "snpCvm" in report
    if is_cvm and args.cce_policy is not None:
        raise ConfigurationError("--cce-policy is for Azure Container Instances evidence; this is a confidential VM's")
    if not is_cvm and (args.nonce is not None or args.allow_debug):
        raise ConfigurationError("--nonce and --allow-debug are for confidential VM evidence (report.snpCvm)")
    result: dict[str, Any]
    if is_cvm:
        result = verify_cvm_document(document, nonce=_nonce(args.nonce), allow_debug=args.allow_debug)
        if not result["fresh"]:
            _warn("no --nonce: the quote answers the document's own nonce, so nothing shows the evidence is fresh")
    else:
        policy = None if args.cce_policy is None else _read_text(args.cce_policy, "CCE policy")
        result = verify_aci_document(document, cce_policy=policy)
        if not result["workload"]["bound"]:
            _warn("no --cce-policy: HOST_DATA names a container policy nobody checked, so no workload is bound")
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "attest", help="verify Azure attestation evidence offline",
        description="Verify Azure TEE evidence offline: every signature, chain and binding Azure Attestation checks.",
    )  # fmt: skip
    commands = group.add_subparsers(dest="attest_command", metavar="SUBCOMMAND", required=True)
    verify = commands.add_parser(
        "verify", help="verify an evidence document and print its claims",
        description="Verify an Azure confidential VM's evidence (report.snpCvm: vTPM quote, HCL report, SNP report "
        "and AMD's VCEK chain) or an Azure Container Instances utility VM's (report.snpCACI, or a /attest/SevSnpVm "
        "body: SNP report, AMD's chain, Microsoft's UVM endorsement) against AMD's and Microsoft's pinned roots, "
        "and print the claims Azure Attestation would issue for it.",
        epilog=_EXIT_CODES,
    )  # fmt: skip
    verify.add_argument("--evidence", type=Path, required=True, metavar="FILE", help="the evidence document (JSON)")
    verify.add_argument(
        "--nonce", metavar="B64",
        help="confidential VM: the nonce you asked the vTPM quote for (base64); without it the evidence is "
        "checked against its own nonce and is not shown to be fresh",
    )  # fmt: skip
    verify.add_argument(
        "--allow-debug", action="store_true",
        help="confidential VM: accept a guest whose SNP policy allows debugging (its memory is open to the host)",
    )  # fmt: skip
    verify.add_argument(
        "--cce-policy", type=Path, metavar="FILE",
        help="Container Instances: the container group's CCE policy file (ccepolicy: <base64>); its SHA-256 must be "
        "the report's HOST_DATA, which binds the containers. Without it no workload is bound",
    )  # fmt: skip
    verify.set_defaults(handler=_verify)
