"""Run the attestation stand-in: ``python -m emulators.attestation_service --help``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from securetrain.appraisal import AppraisalPolicy
from emulators.attestation_service.app import DEFAULT_TOKEN_LIFETIME_S, ServiceConfig, create_app


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.attestation_service",
        description="The local Azure Attestation (MAA) stand-in for SEV-SNP VMs, over HTTPS.",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="signing keys, nonce ledger, issuance log")
    parser.add_argument("--policy", type=Path, required=True, help="the appraisal policy (JSON or YAML)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True, help="TLS server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="TLS server key (PEM)")
    parser.add_argument("--issuer", help="the issuer URL tokens carry (default https://HOST:PORT)")
    parser.add_argument(
        "--token-lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME_S, metavar="SECONDS",
        help=f"how long a token is valid (default {DEFAULT_TOKEN_LIFETIME_S})",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServiceConfig(
        issuer=args.issuer or f"https://{args.host}:{args.port}",
        policy=AppraisalPolicy.load(args.policy),
        state_dir=args.state_dir,
        token_lifetime_s=args.token_lifetime,
    )
    uvicorn.run(
        create_app(config), host=args.host, port=args.port,
        ssl_certfile=str(args.cert), ssl_keyfile=str(args.key), log_level="info",
    )


if __name__ == "__main__":
    main()
