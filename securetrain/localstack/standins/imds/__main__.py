"""Run the IMDS stand-in: ``python -m securetrain.localstack.standins.imds --help``."""

from __future__ import annotations

import argparse
from pathlib import Path

from securetrain.localstack.standins.imds.app import ImdsConfig, create_app
from securetrain.localstack.standins.serving import add_listen_arguments, configure_logging, serve


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m securetrain.localstack.standins.imds",
        description="The local Azure IMDS stand-in (THIM's VCEK chain, the image reference), over HTTPS.",
    )
    parser.add_argument("--snp-platform-dir", type=Path, required=True, help="the simulated SEV-SNP platform's state")
    add_listen_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    serve(create_app(ImdsConfig(snp_platform_dir=args.snp_platform_dir)), args)


if __name__ == "__main__":
    main()
