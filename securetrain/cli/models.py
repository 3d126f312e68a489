"""``securetrain models list | verify | export``: the model registry in the local stack's Azurite.

``verify`` checks a version's whole provenance chain (see docs/models.md) and exits 0, or 3 naming the
link that failed. ``export`` has the TEE re-seal a version for a recipient's RSA public key and records an
``export`` event in the audit log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securetrain.attestation.tokens import AuthorityKeys
from securetrain.audit.checkpoints import (
    load_or_create_signing_key,
    load_public_key,
    local_signing_key_path,
)
from securetrain.audit.events import AuditEvent, EventKind, EventSource
from securetrain.audit.log import AuditLog
from securetrain.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.cli.options import add_stack_storage_options
from securetrain.cvm_client import CvmClient
from securetrain.errors import ConfigurationError
from securetrain.fsutil import atomic_output
from securetrain.model_provenance import (
    JwksKeys,
    ProvenanceInvalid,
    SigningKeys,
    load_pipeline_key,
    local_pipeline_key_path,
    recipient_key,
    verify_provenance,
)
from securetrain.model_registry import REGISTRY_CONTAINER, ModelRegistry
from securetrain.release_policy import ReleasePolicy
from securetrain.sealed import content_digest
from securetrain.stack.envfile import read_stack_env
from securetrain.stack.layout import resolve_state_dir
from securetrain.storage import BlobStore

#: The audit log that export events go to.
EXPORT_AUDIT_LOG = "model-exports"


def _stack_env(state_dir: Path) -> dict[str, str]:
    path = state_dir / "stack.env"
    if not path.exists():
        raise ConfigurationError(f"{path} does not exist: run `securetrain stack up` first")
    return read_stack_env(path)


def _list(args: argparse.Namespace) -> int:
    with BlobStore.from_stack_env(_stack_env(resolve_state_dir(args.state_dir))) as store:
        registry = ModelRegistry(store, args.container)
        versions = registry.versions(args.name)
        if not versions:
            print(f"model {args.name} has no versions in {args.container}")
            return 0
        print(f"{'version':>7}  {'registered':<20}  {'run':<40}  sealed sha256")
        for number in versions:
            manifest = registry.get(args.name, number).manifest
            print(f"{number:>7}  {manifest.get('registered_at', '-'):<20}  "
                  f"{manifest.get('lineage', {}).get('run_id', '-'):<40}  {manifest['sealed_model']['sha256']}")  # fmt: skip
    return 0


def _pipeline_public_key(args: argparse.Namespace, state_dir: Path) -> Ed25519PublicKey:
    if args.public_key is not None:
        try:
            return load_public_key(args.public_key.read_bytes(), str(args.public_key))
        except OSError as exc:
            raise ConfigurationError(f"cannot read the pipeline public key {args.public_key}: {exc.strerror}") from None
    path = local_pipeline_key_path(state_dir)
    if not path.exists():
        raise ConfigurationError(
            f"no --public-key given and the local stack has no pipeline model-signing key at {path}: pass the "
            "pipeline's public key (PEM) the manifest was signed with"
        )
    return load_pipeline_key(path).public_key()


def _release_policy(args: argparse.Namespace, env: dict[str, str]) -> ReleasePolicy:
    source = args.release_policy or env.get("SECURETRAIN_RELEASE_POLICY")
    if not source:
        raise ConfigurationError("no release policy: pass --release-policy (the approved policy's JSON file)")
    try:
        return ReleasePolicy.parse(Path(source).read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read the release policy {source}: {exc.strerror}") from None


def _verify(args: argparse.Namespace) -> int:
    state_dir = resolve_state_dir(args.state_dir)
    env = _stack_env(state_dir)
    pipeline_key = _pipeline_public_key(args, state_dir)
    policy = _release_policy(args, env)
    if args.attestation_jwks is not None:
        offline = JwksKeys.from_file(args.attestation_jwks)

        def keys_for(_issuer: str) -> SigningKeys:
            return offline
    else:
        ca_bundle = env.get("SECURETRAIN_CA_BUNDLE")

        def keys_for(issuer: str) -> SigningKeys:
            # The issuer is one the release policy trusts (checked first); its keys come over verified TLS.
            return AuthorityKeys(issuer, verify=ca_bundle or True)

    with BlobStore.from_stack_env(env) as store:
        registry = ModelRegistry(store, args.container)
        version = registry.get(args.name, args.version)
        stored_sha256 = content_digest(registry.sealed_model(version))
    try:
        checked = verify_provenance(
            version.manifest, stored_sha256, pipeline_key=pipeline_key, release_policy=policy, keys_for=keys_for
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProvenanceInvalid(f"the manifest of {args.name} version {args.version} is malformed: {exc!r}") from None
    for line in checked:
        print(f"ok  {line}")
    print(f"{args.name} version {args.version}: provenance verified")
    return 0


def _export(args: argparse.Namespace) -> int:
    state_dir = resolve_state_dir(args.state_dir)
    try:
        pem = args.recipient_public_key.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the recipient key {args.recipient_public_key}: {exc.strerror}") from None
    recipient = recipient_key(pem)  # a malformed key stops here, before anything is asked or written
    env = _stack_env(state_dir)
    with BlobStore.from_stack_env(env) as store:
        version = ModelRegistry(store, args.container).get(args.name, args.version)
        sealed = version.manifest["sealed_model"]
        with CvmClient.from_stack_env(env, "pipeline") as agent:
            exported = agent.export_model(
                kek_id=sealed["kek_id"], run_id=version.manifest["lineage"]["run_id"], container=version.container,
                blob=sealed["blob"], sealed_sha256=sealed["sha256"], recipient_public_key_pem=pem.decode(),
                nonce=secrets.token_urlsafe(24),
            )  # fmt: skip
        with atomic_output(args.out) as out:
            out.write(exported)
        details = {
            "model": args.name, "version": args.version, "sealed_sha256": sealed["sha256"],
            "recipient_thumbprint": recipient.thumbprint, "export_sha256": hashlib.sha256(exported).hexdigest(),
        }  # fmt: skip
        store.ensure_container(AUDIT_CONTAINER)
        audit_store = BlobAuditStore(store.container_client(AUDIT_CONTAINER), EXPORT_AUDIT_LOG)
        with AuditLog(audit_store, load_or_create_signing_key(local_signing_key_path(state_dir))) as log:
            log.record(AuditEvent.now(EventKind.EXPORT, EventSource.PIPELINE,
                                      run_id=version.manifest["lineage"]["run_id"], details=details))  # fmt: skip
    print(json.dumps({"out": str(args.out), **details}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "models", help="the model registry: list versions, verify provenance, export",
        description="Registered models in the local stack's Azurite (stack.env settings). See docs/models.md for "
        "the provenance chain that `verify` checks.",
    )  # fmt: skip
    add_stack_storage_options(group, container=REGISTRY_CONTAINER, holds="the registry")
    commands = group.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="the versions of a model", description="List model NAME's versions.")
    listing.add_argument("name", metavar="NAME", help="the model's name")
    listing.set_defaults(handler=_list)

    verify = commands.add_parser(
        "verify", help="check a version's provenance chain; exit 3 naming the link that fails",
        description="Verify model NAME version VERSION: the stored sealed model's digest against the manifest; "
        "the pipeline's signature over the manifest; the attestation token's signature (the authority's "
        "published keys, or --attestation-jwks) and its claims against the release policy the manifest names; "
        "the TEE's signature over the model statement with the key the token attests; and the statement's "
        "digests against the manifest. Exits 0 if all holds, 3 naming the first link that fails.",
    )  # fmt: skip
    verify.add_argument("name", metavar="NAME", help="the model's name")
    verify.add_argument("version", metavar="VERSION", type=int, help="the version number")
    verify.add_argument(
        "--public-key", type=Path, default=None, metavar="PEM",
        help="the pipeline's model-signing public key (default: the local stack's key in the state directory)",
    )  # fmt: skip
    verify.add_argument(
        "--release-policy", type=Path, default=None, metavar="JSON",
        help="the approved release policy (default: the local stack's, $SECURETRAIN_RELEASE_POLICY in stack.env); "
        "its SHA-256 must be the one the manifest names",
    )  # fmt: skip
    verify.add_argument(
        "--attestation-jwks", type=Path, default=None, metavar="JSON",
        help="verify offline with this copy of the attestation authority's signing keys (its /certs JWKS) "
        "instead of fetching them",
    )  # fmt: skip
    verify.set_defaults(handler=_verify)

    export = commands.add_parser(
        "export", help="re-seal a version for a recipient's RSA public key (in the TEE), audited",
        description="Have the TEE re-seal model NAME version VERSION for the recipient's RSA public key and "
        f"write it to --out; the recipient opens it with `securetrain unseal` and their private key. The "
        f"KEK never leaves the TEE. Recorded as an `export` event in audit log {EXPORT_AUDIT_LOG}.",
    )  # fmt: skip
    export.add_argument("name", metavar="NAME", help="the model's name")
    export.add_argument("version", metavar="VERSION", type=int, help="the version number")
    export.add_argument(
        "--recipient-public-key", type=Path, required=True, metavar="PEM",
        help="the recipient's RSA public key (PEM, at least 2048 bits)",
    )  # fmt: skip
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the sealed model")
    export.set_defaults(handler=_export)
