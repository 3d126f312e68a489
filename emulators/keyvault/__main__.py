"""Run the Key Vault stand-in: ``python -m emulators.keyvault --help``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from emulators.keyvault.app import VaultConfig, create_app


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.keyvault",
        description="The local Azure Key Vault stand-in (keys API, Secure Key Release), over HTTPS.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="keys (private parts encrypted) and access log")
    parser.add_argument("--master-key", type=Path, required=True, help="the 32-byte master key file (0600)")
    parser.add_argument("--roles", type=Path, required=True, help="the role-assignment file (JSON)")
    parser.add_argument("--identity-issuer", required=True, help="issuer URL of the access tokens (identity service)")
    parser.add_argument("--ca-bundle", type=Path, required=True,
                        help="CA the identity service's and attestation authorities' TLS must chain to")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--cert", type=Path, required=True, help="TLS server certificate (PEM); also signs releases")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = VaultConfig(
        data_dir=args.data_dir,
        master_key_file=args.master_key,
        roles_file=args.roles,
        identity_issuer=args.identity_issuer,
        ca_bundle=args.ca_bundle,
        cert_file=args.cert,
        key_file=args.key,
    )
    uvicorn.run(
        create_app(config), host=args.host, port=args.port,
        ssl_certfile=str(args.cert), ssl_keyfile=str(args.key), log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    main()
