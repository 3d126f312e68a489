"""``securetrain seal | unseal | inspect``: the sealed-data format from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from securetrain.core.errors import ConfigurationError
from securetrain.core.sealed import DEFAULT_SEGMENT_SIZE, KekPrivateKey, KekPublicKey, inspect, seal_file, unseal_file

_EXIT_CODES = """exit codes: 0 ok, 2 bad argument or input, 10 malformed header, 11 unsupported version,
12 wrong key, 13 wrong context, 14 header tampered, 15 segment tampered, 16 segment reordered or
duplicated, 17 truncated, 18 trailing data, 19 plaintext digest mismatch"""


def _context(pairs: list[str]) -> dict[str, str]:
    context: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigurationError(f"context {pair!r} is not KEY=VALUE")
        if key in context:
            raise ConfigurationError(f"context key {key!r} is given twice")
        context[key] = value
    return context


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}") from None


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ConfigurationError(f"{path} is not a file")
    return path


def _kek(args: argparse.Namespace) -> KekPublicKey:
    if args.kek_url is not None:
        from securetrain.core.keyvault import fetch_kek_public_key  # deferred: the Azure SDK is slow to import
        from securetrain.core.settings import ServiceSettings

        return fetch_kek_public_key(args.kek_url, ServiceSettings.load(args.settings))
    if args.kek_id is None:
        raise ConfigurationError("--kek-public-key needs --kek-id (the Key Vault key id with its version)")
    return KekPublicKey.from_pem(_read_file(args.kek_public_key, "KEK public key"), args.kek_id)


def _seal(args: argparse.Namespace) -> int:
    kek = _kek(args)
    header = seal_file(_existing(args.input), args.output, kek, _context(args.context), segment_size=args.segment_size)
    print(json.dumps(header.to_json(), indent=2))
    return 0


def _unseal(args: argparse.Namespace) -> int:
    kek = KekPrivateKey.from_pem(_read_file(args.private_key, "private key"))
    unseal_file(
        _existing(args.input),
        args.output,
        kek,
        expected_context=_context(args.expect_context),
        verify_digest=args.verify_digest,
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    with _existing(args.file).open("rb") as src:
        header = inspect(src)
    json.dump(header.to_json(), sys.stdout, indent=2)
    print()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    common = {"epilog": _EXIT_CODES, "formatter_class": argparse.RawDescriptionHelpFormatter}

    seal = subparsers.add_parser(
        "seal",
        help="encrypt a file for a KEK's public key",
        description="Encrypt INPUT into OUTPUT with a fresh data key wrapped to the KEK's public key "
        "(RSA-OAEP-256). Needs no private key. Prints the header as JSON.",
        **common,
    )
    seal.add_argument("input", type=Path, metavar="INPUT")
    seal.add_argument("output", type=Path, metavar="OUTPUT")
    kek = seal.add_mutually_exclusive_group(required=True)
    kek.add_argument("--kek-public-key", type=Path, metavar="PEM", help="the KEK's RSA public key (with --kek-id)")
    kek.add_argument(
        "--kek-url", metavar="URL",
        help="fetch the KEK's public key from Key Vault (KeyClient): https://VAULT/keys/NAME[/VERSION], as the "
        "identity the settings name (any role that may read keys)",
    )
    seal.add_argument(
        "--kek-id", metavar="URL",
        help="with --kek-public-key: the KEK's Key Vault key id with its version, e.g. https://VAULT/keys/NAME/VERSION",
    )
    seal.add_argument(
        "--context", action="append", default=[], metavar="KEY=VALUE",
        help="bind a context entry (dataset id, classification, ...) to the file; repeatable",
    )
    seal.add_argument(
        "--segment-size", type=int, default=DEFAULT_SEGMENT_SIZE, metavar="BYTES",
        help=f"ciphertext segment size (default {DEFAULT_SEGMENT_SIZE}: Tink's AES256_GCM_HKDF_1MB)",
    )
    seal.set_defaults(handler=_seal)

    unseal = subparsers.add_parser(
        "unseal",
        help="decrypt a sealed file with the KEK's private key (operators and tests; in production only the TEE)",
        description="Decrypt INPUT into OUTPUT. OUTPUT appears, readable by its owner only, only when every "
        "segment authenticated; on any failure nothing is written.",
        **common,
    )
    unseal.add_argument("input", type=Path, metavar="INPUT")
    unseal.add_argument("output", type=Path, metavar="OUTPUT")
    unseal.add_argument("--private-key", type=Path, required=True, metavar="PEM", help="the KEK's RSA private key")
    unseal.add_argument(
        "--expect-context", action="append", default=[], metavar="KEY=VALUE",
        help="fail unless the sealed context has this entry; repeatable",
    )
    unseal.add_argument(
        "--verify-digest", action="store_true",
        help="also recompute the plaintext SHA-256 and compare it with the header (slower; AES-GCM already "
        "authenticates every byte)",
    )
    unseal.set_defaults(handler=_unseal)

    inspect_ = subparsers.add_parser(
        "inspect",
        help="print a sealed file's header as JSON without decrypting anything",
        description="Parse FILE's header and print it as JSON. Needs no key; nothing is decrypted or "
        "authenticated (the header tag needs the data key).",
        **common,
    )
    inspect_.add_argument("file", type=Path, metavar="FILE")
    inspect_.set_defaults(handler=_inspect)
