"""Versioned sealed models in blob storage, each with a manifest of where it came from.

What a version and its manifest hold, and what registration checks before it writes anything, are in
docs/models.md ("What a version is", "Registration"). Versions are numbered 1, 2, ... per name. The manifest
is written last and never overwritten (``If-None-Match: *``): it is what makes a version exist, so a crash
half-way leaves no version, and two pipelines registering at once get different numbers. The model copy is
named by its digest, so writing it again never changes what an existing manifest points at.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core import signed_documents
from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.model_provenance import ProvenanceInvalid, rsa_public_key_from_jwk, verify_statement_signature
from securetrain.core.sealed import SealedHeader, content_digest
from securetrain.core.sealed.errors import SealedFileError
from securetrain.core.sealed.header import read_header
from securetrain.core.storage import BlobAlreadyExists, BlobStore, ContainerNotFound

log = logging.getLogger(__name__)

REGISTRY_CONTAINER = "model-registry"
MANIFEST_SCHEMA = "securetrain.model-manifest/v3"
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_ATTEMPTS = 5


class ModelRejected(SecurityViolation):
    """The sealed model does not verify: its header does not parse, or names another KEK or run."""


class ModelVersionNotFound(SecuretrainError):
    """The registry has no such model version."""


@dataclass(frozen=True)
class ModelVersion:
    """A registered version: where its blobs are and its manifest."""

    name: str
    version: int
    container: str
    manifest: Mapping[str, Any]

    @property
    def model_blob(self) -> str:
        return str(self.manifest["sealed_model"]["blob"])

    @property
    def manifest_blob(self) -> str:
        return manifest_blob(self.name, self.version)


def manifest_blob(name: str, version: int) -> str:
    return f"{name}/v{version}/manifest.json"


def check_model_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"model name {name!r} must be 1-63 lowercase letters, digits and hyphens, starting and ending with "
            "a letter or digit"
        )
    return name


def verify_sealed_model(header: SealedHeader, *, kek_id: str, run_id: str) -> None:
    """Check, without decrypting, that a sealed model is the one ``run_id``'s TEE sealed under ``kek_id``."""
    context = header.content.context
    problems = []
    if header.key.kek_id != kek_id:
        problems.append(f"it is sealed for KEK {header.key.kek_id}, not {kek_id}")
    if context.get("kind") != "model":
        problems.append(f"its seal context says kind {context.get('kind')!r}, not 'model'")
    if context.get("run_id") != run_id:
        problems.append(f"its seal context names run {context.get('run_id')!r}, not {run_id!r}")
    if problems:
        raise ModelRejected("the sealed model does not verify: " + "; ".join(problems))


def check_statement_names(
    provenance: Mapping[str, Any], *, sealed_sha256: str, plaintext_sha256: str, run_id: str
) -> None:
    """Check that the TEE signed ``provenance``'s statement and that it names this sealed model and run.

    The attestation token itself is checked by ``securetrain models verify`` (it needs the authority's
    keys and the release policy); here its runtime key only identifies who signed the statement.
    """
    try:
        claims = jwt.decode(provenance["attestation_token"], options={"verify_signature": False})
        keys = claims["x-ms-runtime"]["keys"]
        verify_statement_signature(rsa_public_key_from_jwk(keys[0]), provenance["statement"], provenance["tee_signature"])
    except (KeyError, IndexError, TypeError, jwt.PyJWTError) as exc:
        raise ModelRejected(f"the job's provenance is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    except ProvenanceInvalid as exc:
        raise ModelRejected(f"the model's provenance does not verify: {exc}") from None
    statement = provenance["statement"]
    if not isinstance(statement.get("tee_log_head"), Mapping):
        raise ModelRejected("the TEE's statement names no head of its event log, so the run's audit trail could "
                            "not be checked for completeness")  # fmt: skip
    expected = {"run_id": run_id, "sealed_model_sha256": sealed_sha256, "model_plaintext_sha256": plaintext_sha256}
    for field, value in expected.items():
        if statement.get(field) != value:
            raise ModelRejected(
                f"the TEE's statement names {field} {statement.get(field)!r}, but the model being registered has {value!r}"
            )


class ModelRegistry:
    """The registry in ``container`` of ``store``."""

    def __init__(self, store: BlobStore, container: str = REGISTRY_CONTAINER) -> None:
        self._store = store
        self.container = container

    def versions(self, name: str) -> list[int]:
        """The registered version numbers of ``name``, ascending."""
        check_model_name(name)
        found = set()
        try:
            for info in self._store.list_blobs(self.container, f"{name}/v"):
                match = re.fullmatch(rf"{re.escape(name)}/v([0-9]+)/manifest\.json", info.name)
                if match:
                    found.add(int(match.group(1)))
        except ContainerNotFound:
            return []  # nothing registered yet
        return sorted(found)

    def get(self, name: str, version: int) -> ModelVersion:
        """The manifest of ``name`` version ``version``; :class:`ModelVersionNotFound` if there is none."""
        check_model_name(name)
        blob = manifest_blob(name, version)
        if not any(info.name == blob for info in self._store.list_blobs(self.container, blob)):
            raise ModelVersionNotFound(f"model {name} has no version {version} in {self.container}")
        try:
            manifest = json.loads(b"".join(self._store.download_chunks(self.container, blob)))
        except ValueError as exc:
            raise ProvenanceInvalid(f"the manifest of {name} version {version} is not JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise ProvenanceInvalid(f"the manifest of {name} version {version} is not a JSON object")
        return ModelVersion(name, version, self.container, manifest)

    def versions_of_run(self, run_id: str) -> list[ModelVersion]:
        """Every registered version whose lineage names run ``run_id`` (a scan of all manifests)."""
        found = []
        try:
            names = [info.name for info in self._store.list_blobs(self.container)]
        except ContainerNotFound:
            return []
        for blob in names:
            match = re.fullmatch(r"([a-z0-9-]+)/v([0-9]+)/manifest\.json", blob)
            if match is None:
                continue
            version = self.get(match.group(1), int(match.group(2)))
            lineage = version.manifest.get("lineage")
            if isinstance(lineage, Mapping) and lineage.get("run_id") == run_id:
                found.append(version)
        return found

    def sealed_model(self, version: ModelVersion) -> bytes:
        """The sealed model ``version``'s manifest points at, as stored now (to check, never to trust)."""
        return b"".join(self._store.download_chunks(self.container, version.model_blob))

    def register(
        self,
        name: str,
        *,
        source_container: str,
        source_blob: str,
        kek_id: str,
        run_id: str,
        lineage: Mapping[str, Any],
        provenance: Mapping[str, Any],
        signing_key: Ed25519PrivateKey,
    ) -> ModelVersion:
        """Verify the sealed model at ``source_container/source_blob`` and register it as the next version.

        ``provenance`` is the job result's ``{statement, tee_signature, attestation_token}``; the manifest
        is signed with the pipeline's ``signing_key``.

        Raises:
            ModelRejected: the sealed model does not verify, or the TEE's statement is not about it.
        """
        check_model_name(name)
        self._store.ensure_container(self.container)
        sealed = b"".join(self._store.download_chunks(source_container, source_blob))
        try:
            header = read_header(io.BytesIO(sealed))
        except SealedFileError as exc:
            raise ModelRejected(f"{source_container}/{source_blob} is not a sealed model: {exc}") from None
        if len(sealed) != header.sealed_length:
            raise ModelRejected(
                f"{source_container}/{source_blob} is {len(sealed)} bytes; its header says {header.sealed_length}"
            )
        verify_sealed_model(header, kek_id=kek_id, run_id=run_id)
        digest = content_digest(sealed)
        check_statement_names(provenance, sealed_sha256=digest, plaintext_sha256=header.content.plaintext_sha256,
                              run_id=run_id)  # fmt: skip
        model_blob = f"{name}/sealed/{digest}.sealed"
        self._store.upload_stream(self.container, model_blob, io.BytesIO(sealed), length=len(sealed), overwrite=True)
        for _ in range(_MAX_ATTEMPTS):
            existing = self.versions(name)
            version = (existing[-1] + 1) if existing else 1
            manifest = {
                "schema": MANIFEST_SCHEMA,
                "name": name,
                "version": version,
                "registered_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "parent_version": existing[-1] if existing else None,
                "sealed_model": {
                    "blob": model_blob,
                    "sha256": digest,
                    "size": len(sealed),
                    "kek_id": header.key.kek_id,
                    "kek_thumbprint": header.key.kek_thumbprint,
                    "context": dict(header.content.context),
                    "plaintext_sha256": header.content.plaintext_sha256,
                },
                "lineage": {"run_id": run_id, **lineage},
                "provenance": {key: provenance[key] for key in ("statement", "tee_signature", "attestation_token")},
                "tee_log_head": provenance["statement"]["tee_log_head"],
            }
            manifest["signatures"] = [signed_documents.signature_entry(signing_key, manifest)]
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            try:
                self._store.upload_stream(self.container, manifest_blob(name, version), io.BytesIO(body), length=len(body))
            except BlobAlreadyExists:
                log.info("version %d of %s was registered meanwhile; trying the next number", version, name)
                continue
            log.info("registered %s version %d (sealed model sha256 %s)", name, version, digest)
            return ModelVersion(name, version, self.container, manifest)
        raise SecuretrainError(f"could not register {name}: {_MAX_ATTEMPTS} version numbers were taken meanwhile")
