"""How every Python stand-in listens: HTTPS only, on the address and certificate the stack gives it.

The command-line half of :func:`securetrain.localstack.service.python_service_argv`: that builds
``--host/--port/--cert/--key``; :func:`add_listen_arguments` reads them and :func:`serve` runs the app.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn
from fastapi import FastAPI


def add_listen_arguments(parser: argparse.ArgumentParser, *, cert_help: str = "TLS server certificate (PEM)") -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--cert", type=Path, required=True, help=cert_help)
    parser.add_argument("--key", type=Path, required=True, help="the certificate's private key (PEM)")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(app: FastAPI, args: argparse.Namespace, *, log_level: str = "warning") -> None:
    """Run ``app`` over HTTPS until stopped (the stack sends SIGTERM)."""
    uvicorn.run(
        app, host=args.host, port=args.port, ssl_certfile=str(args.cert), ssl_keyfile=str(args.key),
        log_level=log_level,
    )  # fmt: skip
