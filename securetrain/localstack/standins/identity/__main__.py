"""Run the identity service: ``python -m securetrain.localstack.standins.identity --help``."""

from __future__ import annotations

import argparse
from pathlib import Path

from securetrain.localstack.standins.identity.app import DEFAULT_TOKEN_LIFETIME_S, IdentityServiceConfig, create_app
from securetrain.localstack.standins.serving import add_listen_arguments, configure_logging, serve


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m securetrain.localstack.standins.identity",
        description="The local OAuth 2.0 token issuer for the stack's identities (Entra ID stand-in), over HTTPS.",
    )
    parser.add_argument("--identities-dir", type=Path, required=True, help="the identities' credentials files")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the token-signing keys are kept")
    parser.add_argument(
        "--token-lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME_S, metavar="SECONDS",
        help=f"how long an access token is valid (default {DEFAULT_TOKEN_LIFETIME_S})",
    )  # fmt: skip
    add_listen_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    config = IdentityServiceConfig(
        base_url=f"https://{args.host}:{args.port}",
        identities_dir=args.identities_dir,
        state_dir=args.state_dir,
        token_lifetime_s=args.token_lifetime,
    )
    serve(create_app(config), args)


if __name__ == "__main__":
    main()
