"""Run the identity service: ``python -m emulators.identity --help``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from emulators.identity.app import DEFAULT_TOKEN_LIFETIME_S, IdentityServiceConfig, create_app


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.identity",
        description="The local OAuth 2.0 token issuer for the stack's identities (Entra ID stand-in), over HTTPS.",
    )
    parser.add_argument("--identities-dir", type=Path, required=True, help="the identities' credentials files")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the token-signing keys are kept")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--cert", type=Path, required=True, help="TLS server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="TLS server key (PEM)")
    parser.add_argument(
        "--token-lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME_S, metavar="SECONDS",
        help=f"how long an access token is valid (default {DEFAULT_TOKEN_LIFETIME_S})",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = IdentityServiceConfig(
        base_url=f"https://{args.host}:{args.port}",
        identities_dir=args.identities_dir,
        state_dir=args.state_dir,
        token_lifetime_s=args.token_lifetime,
    )
    uvicorn.run(
        create_app(config), host=args.host, port=args.port,
        ssl_certfile=str(args.cert), ssl_keyfile=str(args.key), log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    main()
