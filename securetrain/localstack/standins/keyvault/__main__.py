"""Run the Key Vault stand-in: ``python -m securetrain.localstack.standins.keyvault --help``."""

from __future__ import annotations

import argparse
from pathlib import Path

from securetrain.localstack.standins.keyvault.app import VaultConfig, create_app
from securetrain.localstack.standins.serving import add_listen_arguments, configure_logging, serve


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m securetrain.localstack.standins.keyvault",
        description="The local Azure Key Vault stand-in (keys API, Secure Key Release), over HTTPS.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="keys (private parts encrypted) and access log")
    parser.add_argument("--master-key", type=Path, required=True, help="the 32-byte master key file (0600)")
    parser.add_argument("--roles", type=Path, required=True, help="the role-assignment file (JSON)")
    parser.add_argument("--identity-authority", required=True,
                        help="the identity service's authority URL, https://HOST/TENANT (its OpenID metadata)")
    parser.add_argument("--identity-issuer", required=True, help="the issuer (iss) of the access tokens it accepts")
    parser.add_argument("--ca-bundle", type=Path, required=True,
                        help="CA the identity service's and attestation authorities' TLS must chain to")  # fmt: skip
    parser.add_argument(
        "--purge-protection", action="store_true",
        help="Azure's purge protection: a deleted key cannot be purged before its 90-day retention ends",
    )  # fmt: skip
    add_listen_arguments(parser, cert_help="TLS server certificate (PEM); also signs releases")
    args = parser.parse_args()
    configure_logging()
    config = VaultConfig(
        data_dir=args.data_dir,
        master_key_file=args.master_key,
        roles_file=args.roles,
        identity_authority=args.identity_authority,
        identity_issuer=args.identity_issuer,
        ca_bundle=args.ca_bundle,
        cert_file=args.cert,
        key_file=args.key,
        purge_protection=args.purge_protection,
    )
    serve(create_app(config), args)


if __name__ == "__main__":
    main()
