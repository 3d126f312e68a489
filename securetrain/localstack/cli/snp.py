"""``securetrain snp verify | report``: SEV-SNP evidence from the command line.

``verify`` runs the real verifier on a report and its VCEK, ASK and ARK certificates and prints the parsed
report as JSON; given an attestation policy (Azure Attestation's policy language), it also runs the policy
over the report's claims, as the attestation service does. ``report`` asks the local simulated platform for
a signed report, for experiments; its root is trusted only where ``--trust-root`` names it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from securetrain.localstack.platform.snp_platform import DEFAULT_TCB, SimulatedSnpPlatform
from securetrain.core.errors import ConfigurationError
from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.report import GuestPolicy, TcbVersion
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.core.snp.verifier import verify_report
from securetrain.localstack.layout import StackLayout, resolve_state_dir, write_file
from securetrain.localstack.standins.attestation_service.appraisal import policy_claims
from securetrain.localstack.standins.attestation_service.evidence import sev_snp_claims, trusted_root
from securetrain.localstack.standins.attestation_service.policy_evaluation import evaluate
from securetrain.localstack.standins.attestation_service.policy_language import AttestationPolicy

_VERIFY_EXIT_CODES = """exit codes: 0 verified (and, with --policy, authorized), 2 bad argument, file or policy,
3 evidence refused: the message names the check or the policy rule that failed"""
_REPORT_EXIT_CODES = "exit codes: 0 report written, 2 bad argument or unusable state directory"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_report(path: Path) -> bytes:
    """A ``.hex`` file is hex digits (whitespace and newlines ignored); anything else is the raw report."""
    data = _read(path, "report")
    if path.suffix.lower() != ".hex":
        return data
    try:
        return bytes.fromhex("".join(data.decode("ascii").split()))
    except (UnicodeDecodeError, ValueError):
        raise ConfigurationError(f"report {path} is named .hex but is not hex digits") from None


def _verify(args: argparse.Namespace) -> int:
    policy = None
    if args.policy:
        try:
            policy = AttestationPolicy.parse(_read(args.policy, "attestation policy").decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigurationError(f"attestation policy {args.policy} is not UTF-8 text") from None
    roots = (*AMD_ROOTS, *(trusted_root(path) for path in args.trust_root))
    chain = CertificateChain.load(_read(args.vcek, "VCEK"), _read(args.ask, "ASK"), _read(args.ark, "ARK"))
    verified = verify_report(_read_report(args.report), chain, roots)
    result = {**verified.to_dict(), "policy_hash": None}
    if policy is not None:
        issued = evaluate(policy, tuple(policy_claims(sev_snp_claims(verified.report)))).issued
        result.update(policy_hash=policy.hash, issued=dict(issued))
    print(json.dumps(result, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    platform = SimulatedSnpPlatform.load_or_create(args.state_dir or StackLayout(resolve_state_dir()).snp_platform_dir)
    evidence = platform.report(
        report_data=args.report_data,
        measurement=args.measurement,
        host_data=args.host_data,
        policy=GuestPolicy.build(debug=args.debug, migrate_ma=args.migrate_ma),
        vmpl=args.vmpl,
        tcb=args.tcb,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    files = {
        "report": (args.out / "report.bin", evidence.report),
        "vcek": (args.out / "vcek.pem", evidence.chain.vcek.to_pem()),
        "ask": (args.out / "ask.pem", evidence.chain.ask.to_pem()),
        "ark": (args.out / "ark.pem", evidence.chain.ark.to_pem()),
    }
    for path, content in files.values():
        write_file(path, content, mode=0o644)
    summary = {name: str(path) for name, (path, _) in files.items()}
    print(json.dumps({**summary, "root": platform.root.to_dict()}, indent=2))
    return 0


def _hex_bytes(size: int) -> Any:
    def parse(text: str) -> bytes:
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None
        if len(value) != size:
            raise argparse.ArgumentTypeError(f"must be {size} bytes ({2 * size} hex digits), got {len(value)}")
        return value

    return parse


def _tcb(text: str) -> TcbVersion:
    try:
        bootloader, tee, snp, microcode = (int(part) for part in text.split(","))
        return TcbVersion(bootloader=bootloader, tee=tee, snp=snp, microcode=microcode)
    except (ValueError, ConfigurationError):
        raise argparse.ArgumentTypeError(f"{text!r} is not BOOTLOADER,TEE,SNP,MICROCODE with each 0-255") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    snp = subparsers.add_parser(
        "snp",
        help="verify SEV-SNP attestation reports; make simulated ones",
        description="AMD SEV-SNP attestation evidence: verify a report, or produce one from the simulated platform.",
    )
    commands = snp.add_subparsers(dest="snp_command", metavar="SUBCOMMAND", required=True)

    verify = commands.add_parser(
        "verify",
        help="verify a report's signature and certificate chain, and optionally run an attestation policy over it",
        description="Parse REPORT as the SEV-SNP ABI lays it out, check its ECDSA P-384 signature with the VCEK, "
        "the VCEK -> ASK -> ARK chain (RSASSA-PSS SHA-384) and that the VCEK is for the report's chip and TCB. "
        "The trusted roots are AMD's ARK-Milan and ARK-Genoa, and any --trust-root. With --policy, the report's "
        "claims (MAA's SevSnpVm names) must also be authorized by the policy. Prints the parsed report as JSON.",
        epilog=_VERIFY_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument(
        "--report",
        type=Path,
        required=True,
        metavar="FILE",
        help="the ATTESTATION_REPORT: FILE.hex as hex (whitespace ignored), otherwise the raw 1184 bytes",
    )
    verify.add_argument("--vcek", type=Path, required=True, metavar="FILE", help="the VCEK certificate (PEM or DER)")
    verify.add_argument("--ask", type=Path, required=True, metavar="FILE", help="the ASK certificate (PEM or DER)")
    verify.add_argument("--ark", type=Path, required=True, metavar="FILE", help="the ARK certificate (PEM or DER)")
    verify.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="an attestation policy in Azure Attestation's policy language (version 1.0): its authorization "
        "rules must permit the report's claims; prints its x-ms-policy-hash and the claims it issues",
    )
    verify.add_argument(
        "--trust-root",
        type=Path,
        action="append",
        default=[],
        metavar="ARK_CERT",
        help="an ARK certificate to trust besides AMD's (the simulated platform's ark.pem); repeatable",
    )
    verify.set_defaults(handler=_verify)

    report = commands.add_parser(
        "report",
        help="produce a report signed by the local SIMULATED platform (for experiments)",
        description="Write OUT/report.bin and OUT/vcek.pem, ask.pem, ark.pem: a report signed by the simulated "
        "platform kept in --state-dir (created on first use). Its root is not AMD's: `snp verify` refuses it "
        "unless --trust-root names its ark.pem.",
        epilog=_REPORT_EXIT_CODES,
    )
    report.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the report and chain")
    report.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the simulated platform's keys (default: snp-platform/ in the stack's state directory)",
    )
    report.add_argument(
        "--measurement", type=_hex_bytes(48), required=True, metavar="HEX", help="MEASUREMENT, 48 bytes as hex"
    )
    report.add_argument(
        "--host-data", type=_hex_bytes(32), required=True, metavar="HEX", help="HOST_DATA, 32 bytes as hex"
    )
    report.add_argument(
        "--report-data",
        type=_hex_bytes(64),
        default=bytes(64),
        metavar="HEX",
        help="REPORT_DATA, 64 bytes as hex (default: zeros)",
    )
    report.add_argument(
        "--debug", action="store_true", help="set the guest policy's DEBUG bit (an attestation policy should refuse it)"
    )
    report.add_argument("--migrate-ma", action="store_true", help="set the guest policy's MIGRATE_MA bit")
    report.add_argument(
        "--vmpl", type=int, choices=range(4), default=0, help="the VMPL that asked for the report (default 0)"
    )
    report.add_argument(
        "--tcb",
        type=_tcb,
        default=DEFAULT_TCB,
        metavar="BL,TEE,SNP,UCODE",
        help="the platform's TCB: bootloader, TEE, SNP firmware and microcode SVNs (default "
        + ",".join(str(v) for v in DEFAULT_TCB.to_dict().values())
        + ")",
    )
    report.set_defaults(handler=_report)
