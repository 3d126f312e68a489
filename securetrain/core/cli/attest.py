"""``securetrain attest verify`` / ``verify-gpu``: check TEE evidence offline and print its claims.

``verify`` checks Azure evidence as Azure Attestation would; ``verify-gpu`` checks an NVIDIA H100's attestation
report and device chain against NVIDIA's pinned root (:mod:`securetrain.core.nvidia`) and prints the claims NVIDIA's
attestation service names, for the nonce given or the one derived from the TEE's runtime data.

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
from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.core.nvidia.certs import GpuCertificateChain
from securetrain.core.nvidia.claims import gpu_claims
from securetrain.core.nvidia.reference import ReferenceMeasurements
from securetrain.core.nvidia.roots import NVIDIA_DEVICE_ROOTS
from securetrain.core.nvidia.verifier import verify_gpu_report

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


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc}") from None


def _gpu_report(path: Path) -> bytes:
    """The report as NVML gives it (binary) or as hex text (how NVIDIA's tools and test vectors write it)."""
    data = _read_bytes(path, "GPU report")
    text = data.strip()
    if text and all(chr(byte) in "0123456789abcdefABCDEF" for byte in text):
        return bytes.fromhex(text.decode())
    return data


def _expected_gpu_nonce(args: argparse.Namespace) -> bytes:
    if (args.nonce is None) == (args.runtime_data is None):
        raise ConfigurationError("give exactly one of --nonce and --runtime-data")
    if args.runtime_data is not None:
        return gpu_nonce(_read_bytes(args.runtime_data, "runtime data"))
    try:
        nonce = bytes.fromhex(args.nonce)
    except ValueError:
        raise ConfigurationError("--nonce is not hex") from None
    if len(nonce) != 32:
        raise ConfigurationError("--nonce must be 32 bytes (64 hex digits)")
    return nonce


def _verify_gpu(args: argparse.Namespace) -> int:
    nonce = _expected_gpu_nonce(args)
    reference = None
    if args.reference is not None:
        try:
            reference = ReferenceMeasurements.from_dict(json.loads(_read_text(args.reference, "reference measurements")))
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{args.reference} is not JSON: {exc}") from None
    verified = verify_gpu_report(
        _gpu_report(args.report),
        GpuCertificateChain.from_pem(_read_bytes(args.chain, "certificate chain")),
        NVIDIA_DEVICE_ROOTS,
        expected_nonce=nonce,
        reference=reference,
    )
    if reference is None:
        _warn("no --reference: the measurements were not compared with NVIDIA's reference values (no measres)")
    _warn("certificate revocation (NVIDIA's OCSP) is not checked offline")
    json.dump({"claims": gpu_claims(verified), **verified.to_dict()}, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "attest", help="verify TEE attestation evidence offline",
        description="Verify TEE evidence offline: Azure's (every signature, chain and binding Azure Attestation "
        "checks) and an NVIDIA H100's.",
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
    gpu = commands.add_parser(
        "verify-gpu", help="verify an NVIDIA H100 attestation report and print its claims",
        description="Verify an NVIDIA H100 attestation report (SPDM GET_MEASUREMENTS request and signed response) "
        "and its device certificate chain against NVIDIA's pinned root: layout, chain, FWID, signature, nonce and, "
        "with --reference, measurements. Print the claims NVIDIA's attestation service names.",
        epilog=_EXIT_CODES,
    )  # fmt: skip
    gpu.add_argument("--report", type=Path, required=True, metavar="FILE", help="the report, binary or hex")
    gpu.add_argument("--chain", type=Path, required=True, metavar="PEM", help="the device chain, leaf first")
    gpu.add_argument("--nonce", metavar="HEX", help="the nonce the report was asked for (32 bytes, hex)")
    gpu.add_argument(
        "--runtime-data", type=Path, metavar="FILE",
        help="instead of --nonce: the runtime data the TEE's CPU evidence binds; the nonce is derived from it",
    )  # fmt: skip
    gpu.add_argument(
        "--reference", type=Path, metavar="JSON",
        help='reference measurements: {"source": ..., "measurements": {"<index>": ["<SHA-384 hex>", ...]}}',
    )  # fmt: skip
    gpu.set_defaults(handler=_verify_gpu)
