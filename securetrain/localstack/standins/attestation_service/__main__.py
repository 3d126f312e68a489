"""Run the attestation stand-in: ``python -m securetrain.localstack.standins.attestation_service --help``."""

from __future__ import annotations

import argparse
from pathlib import Path


from securetrain.localstack.standins.attestation_service.app import DEFAULT_TOKEN_LIFETIME_S, ServiceConfig, create_app
from securetrain.localstack.standins.serving import add_listen_arguments, configure_logging, serve
from securetrain.core.appraisal import AppraisalPolicy


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m securetrain.localstack.standins.attestation_service",
        description="The local Azure Attestation (MAA) stand-in for SEV-SNP VMs, over HTTPS.",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="signing keys, nonce ledger, issuance log")
    parser.add_argument("--policy", type=Path, required=True, help="the appraisal policy (JSON or YAML)")
    parser.add_argument("--issuer", help="the issuer URL tokens carry (default https://HOST:PORT)")
    parser.add_argument(
        "--token-lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME_S, metavar="SECONDS",
        help=f"how long a token is valid (default {DEFAULT_TOKEN_LIFETIME_S})",
    )
    add_listen_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    config = ServiceConfig(
        issuer=args.issuer or f"https://{args.host}:{args.port}",
        policy=AppraisalPolicy.load(args.policy),
        state_dir=args.state_dir,
        token_lifetime_s=args.token_lifetime,
    )
    serve(create_app(config), args, log_level="info")


if __name__ == "__main__":
    main()
