"""Run the attestation stand-in: ``python -m securetrain.localstack.standins.attestation_service --help``."""

from __future__ import annotations

import argparse
from pathlib import Path

from securetrain.core.errors import ConfigurationError
from securetrain.localstack.standins.attestation_service.app import DEFAULT_TOKEN_LIFETIME_S, ServiceConfig, create_app
from securetrain.localstack.standins.attestation_service.evidence import trusted_root
from securetrain.localstack.standins.attestation_service.gpu_attestation import (
    GpuVerifierConfig,
    reference_measurements,
    trusted_gpu_root,
)
from securetrain.localstack.standins.serving import add_listen_arguments, configure_logging, serve


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m securetrain.localstack.standins.attestation_service",
        description="The local Azure Attestation (MAA) stand-in for SEV-SNP VMs, over HTTPS. Its attestation "
        "policies are managed through MAA's policy API (azure-security-attestation's AttestationAdministrationClient).",
    )
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="signing keys, the policies in force, nonce ledger, decision logs")  # fmt: skip
    parser.add_argument("--trust-root", type=Path, action="append", default=[], metavar="ARK_CERT",
                        help="an ARK certificate evidence may chain to besides AMD's (the local stack's simulated "
                             "platform); what it signs is marked simulated. Repeatable")  # fmt: skip
    parser.add_argument("--trust-gpu-root", type=Path, action="append", default=[], metavar="ROOT_CERT",
                        help="a GPU device root certificate (PEM) GPU evidence may chain to besides NVIDIA's (the "
                             "local stack's simulated H100); what it signs is marked simulated. Repeatable")  # fmt: skip
    parser.add_argument("--gpu-reference", type=Path, metavar="JSON",
                        help="reference measurements GPU reports must match (without them no GPU token says measres)")  # fmt: skip
    parser.add_argument("--identity-authority", required=True,
                        help="the Entra authority https://HOST/TENANT whose OpenID metadata publishes the keys of "
                             "policy managers' access tokens")  # fmt: skip
    parser.add_argument("--identity-issuer", required=True, help="the issuer (iss) of the access tokens it accepts")
    parser.add_argument("--ca-bundle", type=Path, required=True, help="CA the identity service's TLS must chain to")
    parser.add_argument("--roles", type=Path, required=True,
                        help="the role-assignment file (JSON): who may read, set and reset policies")  # fmt: skip
    parser.add_argument("--issuer", help="the issuer URL tokens carry (default https://HOST:PORT)")
    parser.add_argument(
        "--token-lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME_S, metavar="SECONDS",
        help=f"how long a token is valid (default {DEFAULT_TOKEN_LIFETIME_S})",
    )  # fmt: skip
    add_listen_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    try:
        roots = tuple(trusted_root(path) for path in args.trust_root)
        gpu = GpuVerifierConfig(
            additional_roots=tuple(trusted_gpu_root(path) for path in args.trust_gpu_root),
            reference=None if args.gpu_reference is None else reference_measurements(args.gpu_reference),
        )
    except ConfigurationError as exc:
        parser.error(str(exc))
    config = ServiceConfig(
        issuer=args.issuer or f"https://{args.host}:{args.port}",
        state_dir=args.state_dir,
        additional_roots=roots,
        identity_authority=args.identity_authority,
        identity_issuer=args.identity_issuer,
        ca_bundle=args.ca_bundle,
        roles_file=args.roles,
        token_lifetime_s=args.token_lifetime,
        gpu=gpu,
    )
    serve(create_app(config), args, log_level="info")


if __name__ == "__main__":
    main()
