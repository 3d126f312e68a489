"""How the verifying commands check attestation tokens: the approved release policy and the signing keys the
attestation authority publishes (fetched over TLS verified against the configured roots, or an offline copy).

``models verify`` and ``audit verify`` share this: a token counts only if the authority that the release
policy trusts signed it and its claims satisfy that policy (see
:func:`securetrain.core.model_provenance.verify_attestation_token`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from securetrain.core.audit.tee_log import TokenCheck
from securetrain.core.cli.settings import CommandSettings
from securetrain.core.model_provenance import JwksKeys, SigningKeys, published_keys, verify_attestation_token


def add_token_options(parser: argparse.ArgumentParser) -> None:
    """``--release-policy`` and ``--attestation-jwks``."""
    parser.add_argument(
        "--release-policy", type=Path, default=None, metavar="JSON",
        help="the approved release policy (default: $SECURETRAIN_RELEASE_POLICY); attestation tokens must satisfy it",
    )  # fmt: skip
    parser.add_argument(
        "--attestation-jwks", type=Path, default=None, metavar="JSON",
        help="verify offline with this copy of the attestation authority's signing keys (its /certs JWKS) "
        "instead of fetching them",
    )  # fmt: skip


def authority_keys(args: argparse.Namespace, settings: CommandSettings) -> Callable[[str], SigningKeys]:
    """The signing keys of an issuer: the offline copy, or fetched over TLS verified against the configured roots."""
    if args.attestation_jwks is not None:
        offline = JwksKeys.from_file(args.attestation_jwks)
        return lambda _issuer: offline
    return published_keys(settings.tls_verify)


def token_check(args: argparse.Namespace, settings: CommandSettings) -> TokenCheck:
    """Validate a token (historical: expiry is not checked) against the policy and the authority's keys."""
    policy = settings.approved_release_policy(args.release_policy)
    keys_for = authority_keys(args, settings)

    def check(raw: str) -> Mapping[str, Any]:
        return verify_attestation_token(raw, policy, keys_for)

    return check
