"""The HTTP face of the Key Vault stand-in: the keys REST API as ``azure-keyvault-keys`` calls it.

    POST   /keys/{name}/create                 create a key (or a new version of it)
    POST   /keys/{name}/rotate                 new version with the latest version's settings and release policy
    GET    /keys/{name}/{version}              a version ("" = the latest)
    PATCH  /keys/{name}/{version}              update attributes, key_ops, tags, release policy (403 if immutable)
    GET    /keys                               list keys (latest version's attributes)
    GET    /keys/{name}/versions               list a key's versions
    DELETE /keys/{name}                        soft-delete; GET/DELETE /deletedkeys/{name}, POST .../recover
                                               (purge refused with 403 while the vault has purge protection)
    POST   /keys/{name}/{version}/encrypt|decrypt|wrapkey|unwrapkey   RSA-OAEP, RSA-OAEP-256
    POST   /keys/{name}/{version}/release      Secure Key Release: {"target": token} -> {"value": JWS}

Every request needs ``api-version`` (2025-07-01 or 7.0-7.6) and a bearer token (challenge auth: a
request without one gets ``401`` + ``WWW-Authenticate: Bearer authorization=..., resource=...``).
Errors have Key Vault's shape ``{"error": {"code", "message"}}``: 400 BadParameter, 401 Unauthorized,
403 Forbidden, 404 KeyNotFound, 409 Conflict.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from securetrain.localstack.standins.decision_log import DecisionLog
from securetrain.localstack.standins.access_tokens import Caller, Unauthenticated
from securetrain.localstack.standins.keyvault.authz import VAULT_RESOURCE, Action, vault_401_message, vault_authorizer
from securetrain.localstack.standins.rbac import NotPermitted
from securetrain.localstack.standins.keyvault.bodies import (
    KeyAttributes,
    KeyCreateParameters,
    KeyOperationsParameters,
    KeyReleaseParameters,
    KeyReleasePolicy,
    KeyUpdateParameters,
)
from securetrain.localstack.standins.request_body import BodyInvalid, RequestBody
from securetrain.localstack.standins.keyvault.release import KeyReleaser, ReleaseRefused, ReleaseSigner
from securetrain.localstack.standins.keyvault.store import (
    KEY_NAME,
    KEY_VERSION,
    RECOVERABLE_DAYS,
    RSA_KEY_SIZES,
    KeySpec,
    KeyStore,
    KeyVersion,
    StoredKey,
    load_or_create_master_key,
)
from securetrain.core.json_input import JsonInputError, read_json_object
from securetrain.core.release_policy import ReleasePolicy, ReleasePolicyInvalid

log = logging.getLogger(__name__)

API_VERSIONS = frozenset({"2025-07-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6"})
LATEST_API_VERSION = "2025-07-01"
KEY_TYPES = ("RSA", "RSA-HSM")
KEY_OPERATIONS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export")
DEFAULT_KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
POLICY_CONTENT_TYPE = "application/json; charset=utf-8"
# Key Vault documents no request size limit for the keys API; ours is far above any body it defines
# (the largest is a release policy) and bounds what one request can make the stand-in hold.
MAX_BODY_BYTES = 256 << 10
# Soft delete is always on; purge protection is a vault setting (--purge-protection). The levels and their
# meaning: DeletionRecoveryLevel in the Key Vault REST API (docs/keys.md, "Purge protection").
RECOVERY_LEVEL_PURGEABLE = "Recoverable+Purgeable"
RECOVERY_LEVEL_PROTECTED = "Recoverable"
_OAEP = {
    "RSA-OAEP": padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    "RSA-OAEP-256": padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
}
# URL operation -> (data action, the key_ops entry the key must carry, whether it uses the private key)
_CRYPTO_OPERATIONS = {
    "encrypt": (Action.ENCRYPT, "encrypt", False),
    "decrypt": (Action.DECRYPT, "decrypt", True),
    "wrapkey": (Action.WRAP, "wrapKey", False),
    "unwrapkey": (Action.UNWRAP, "unwrapKey", True),
}


class _OptionalSegment(Convertor[str]):
    """A path segment that may be empty: the SDK asks for the latest version as ``/keys/{name}/``."""

    regex = "[^/]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("optseg", _OptionalSegment())


class VaultError(Exception):
    """An error answered in Key Vault's shape."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, dict(headers or {})


def _bad(message: str) -> VaultError:
    return VaultError(400, "BadParameter", message)


Body = TypeVar("Body", bound=RequestBody)


@dataclass(frozen=True)
class VaultConfig:
    """Where the vault keeps its keys and log, whom it trusts, and how it signs releases."""

    data_dir: Path
    master_key_file: Path
    roles_file: Path
    #: The Entra authority (``https://HOST/{tenant}``): its OpenID metadata, and what the 401 challenge names.
    identity_authority: str
    #: The ``iss`` of the access tokens it accepts (Entra's v1 issuer, ``https://sts.windows.net/{tenant}/``).
    identity_issuer: str
    ca_bundle: Path
    cert_file: Path
    key_file: Path
    #: Azure's purge protection: a deleted key cannot be purged before its retention period ends.
    purge_protection: bool = False

    @property
    def recovery_level(self) -> str:
        return RECOVERY_LEVEL_PROTECTED if self.purge_protection else RECOVERY_LEVEL_PURGEABLE


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str, field: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise _bad(f"'{field}' is not valid base64url") from None


def _attributes(version: KeyVersion, recovery_level: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "enabled": version.enabled,
        "created": version.created,
        "updated": version.updated,
        "recoveryLevel": recovery_level,
        "recoverableDays": RECOVERABLE_DAYS,
        "exportable": version.exportable,
    }
    if version.not_before is not None:
        attributes["nbf"] = version.not_before
    if version.expires is not None:
        attributes["exp"] = version.expires
    return attributes


def _key_id(vault: str, version: KeyVersion) -> str:
    return f"{vault}/keys/{version.name}/{version.version}"


def _key_bundle(vault: str, version: KeyVersion, recovery_level: str) -> dict[str, Any]:
    numbers = version.public_numbers
    bundle: dict[str, Any] = {
        "key": {
            "kid": _key_id(vault, version),
            "kty": version.kty,
            "key_ops": list(version.key_ops),
            "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        },
        "attributes": _attributes(version, recovery_level),
    }
    if version.tags:
        bundle["tags"] = dict(version.tags)
    if version.release_policy is not None:
        bundle["release_policy"] = {
            "contentType": POLICY_CONTENT_TYPE,
            "data": _b64url(version.release_policy),
            "immutable": version.policy_immutable,
        }
    return bundle


def _deleted_bundle(vault: str, key: StoredKey, recovery_level: str) -> dict[str, Any]:
    assert key.deleted_at is not None
    return {
        **_key_bundle(vault, key.latest, recovery_level),
        "recoveryId": f"{vault}/deletedkeys/{key.name}",
        "deletedDate": key.deleted_at,
        "scheduledPurgeDate": key.deleted_at + RECOVERABLE_DAYS * 86400,
    }


def _parse_policy(document: KeyReleasePolicy) -> tuple[bytes, bool]:
    """The canonical policy bytes and the immutable flag from a request's ``release_policy``."""
    content_type = document.content_type or POLICY_CONTENT_TYPE
    if content_type.replace(" ", "").lower() != POLICY_CONTENT_TYPE.replace(" ", ""):
        raise _bad(f"release_policy contentType {content_type!r} is not supported (only {POLICY_CONTENT_TYPE})")
    try:
        policy = ReleasePolicy.parse(_unb64url(document.data, "release_policy.data"))
    except ReleasePolicyInvalid as exc:
        raise _bad(f"Invalid release policy: {exc}") from None
    return policy.to_bytes(), bool(document.immutable)


def _key_ops(value: list[str]) -> tuple[str, ...]:
    if not all(op in KEY_OPERATIONS for op in value):
        raise _bad(f"'key_ops' must be a list of {', '.join(KEY_OPERATIONS)}")
    return tuple(value)


def _create_spec(body: KeyCreateParameters) -> KeySpec:
    if body.kty not in KEY_TYPES:
        raise _bad(f"The key type {body.kty!r} is not supported by this vault (supported: {', '.join(KEY_TYPES)})")
    key_size = _integer(body.key_size or 2048, "RSA key size", RSA_KEY_SIZES)
    exponent = _integer(body.public_exponent or 65537, "public exponent", (65537,))
    attributes = body.attributes or KeyAttributes()
    exportable = bool(attributes.exportable)
    policy, immutable = _parse_policy(body.release_policy) if body.release_policy is not None else (None, False)
    if exportable and policy is None:
        raise _bad("Exportable keys must have a release policy")
    return KeySpec(
        kty=body.kty,
        key_size=key_size,
        public_exponent=exponent,
        key_ops=_key_ops(body.key_ops) if body.key_ops is not None else DEFAULT_KEY_OPS,
        enabled=attributes.enabled is not False,
        not_before=attributes.nbf,
        expires=attributes.exp,
        exportable=exportable,
        release_policy=policy,
        policy_immutable=immutable,
        tags=body.tags or {},
    )


def _updated(version: KeyVersion, body: KeyUpdateParameters) -> dict[str, Any]:
    """The changes an update body asks for, refusing what may not change."""
    changes: dict[str, Any] = {}
    attributes = body.attributes or KeyAttributes()
    if attributes.enabled is not None:
        changes["enabled"] = attributes.enabled
    if attributes.nbf is not None:
        changes["not_before"] = attributes.nbf
    if attributes.exp is not None:
        changes["expires"] = attributes.exp
    if attributes.exportable is not None and attributes.exportable != version.exportable:
        raise _bad("'exportable' is fixed when a key is created and cannot be changed")
    if body.key_ops is not None:
        changes["key_ops"] = _key_ops(body.key_ops)
    if body.tags is not None:
        changes["tags"] = body.tags
    if body.release_policy is not None:
        policy, immutable = _parse_policy(body.release_policy)
        if version.policy_immutable and (policy != version.release_policy or not immutable):
            raise VaultError(
                403, "Forbidden", f"the release policy of {version.name}/{version.version} is immutable and cannot be changed"
            )
        changes["release_policy"], changes["policy_immutable"] = policy, immutable
    return changes


async def _body(request: Request, body_type: type[Body]) -> Body:
    """The request's body as ``body_type``: strict JSON (:mod:`securetrain.core.json_input`), then its shape."""
    try:
        return body_type.parse(read_json_object(await request.body(), max_bytes=MAX_BODY_BYTES, what="The request body"))
    except (JsonInputError, BodyInvalid) as exc:
        raise _bad(str(exc)) from None


def _integer(value: int, field: str, allowed: tuple[int, ...]) -> int:
    if value not in allowed:
        raise _bad(f"{field} {value!r} is not supported (supported: {', '.join(map(str, allowed))})")
    return value


def create_app(config: VaultConfig) -> FastAPI:
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = KeyStore(config.data_dir, load_or_create_master_key(config.master_key_file))
    authorizer = vault_authorizer(config.identity_issuer, config.identity_authority, str(config.ca_bundle), config.roles_file)
    releaser = KeyReleaser(str(config.ca_bundle), ReleaseSigner.from_files(str(config.cert_file), str(config.key_file)))
    access_log = DecisionLog(config.data_dir / "access.jsonl")
    recovery_level = config.recovery_level
    # Key Vault's challenge names the authority (the SDK takes the tenant from its path) and the resource.
    challenge = f'Bearer authorization="{config.identity_authority}", resource="{VAULT_RESOURCE}"'
    app = FastAPI(title="securetrain Key Vault stand-in", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(VaultError)
    async def vault_error(_: Request, exc: VaultError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status, content={"error": {"code": exc.code, "message": exc.message}}, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path} is not an operation of this vault ({exc.detail})"
        return JSONResponse(status_code=exc.status_code, content={"error": {"code": "BadParameter", "message": message}})

    def vault_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def guard(request: Request, action: Action, name: str = "", version: str = "") -> Caller:
        """Check api-version, authenticate and authorize; log the decision. Raises VaultError."""
        api_version = request.query_params.get("api-version")
        if api_version not in API_VERSIONS:
            raise _bad(
                f"The specified version ({api_version}) is not recognized. Consider using the latest supported "
                f"version ({LATEST_API_VERSION})."
            )
        resource = f"keys/{name}/{version}".rstrip("/") if name else "keys"
        try:
            caller = authorizer.authenticate(request.headers.get("authorization"))
        except Unauthenticated as exc:
            if request.headers.get("authorization"):
                access_log.record(decision="denied", status=401, operation=action.value, key=name, version=version,
                                  identity=None, reason=vault_401_message(exc))  # fmt: skip
            raise VaultError(401, "Unauthorized", vault_401_message(exc), {"WWW-Authenticate": challenge}) from None
        try:
            authorizer.authorize(caller, action, f"{vault_url(request)}/{resource}")
        except NotPermitted as exc:
            access_log.record(decision="denied", status=403, operation=action.value, key=name, version=version,
                              identity=caller.name, oid=caller.object_id, reason=str(exc))  # fmt: skip
            raise VaultError(403, "Forbidden", str(exc)) from None
        access_log.record(decision="allowed", operation=action.value, key=name, version=version,
                          identity=caller.name, oid=caller.object_id)  # fmt: skip
        return caller

    def check_name(name: str) -> None:
        if not KEY_NAME.fullmatch(name):
            raise _bad(f"Key name {name!r} is invalid: 1-127 letters, digits and dashes")

    def live_key(name: str) -> StoredKey:
        check_name(name)
        key = store.load(name)
        if key is None or key.deleted_at is not None:
            raise VaultError(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        return key

    def key_version(name: str, version: str) -> KeyVersion:
        key = live_key(name)
        if version and not KEY_VERSION.fullmatch(version):
            raise _bad(f"Key version {version!r} is invalid: a version is 32 lower-case hex digits")
        found = key.version(version)
        if found is None:
            raise VaultError(
                404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not found in this key vault."
            )
        return found

    def deleted_key(name: str) -> StoredKey:
        check_name(name)
        key = store.load(name)
        if key is None or key.deleted_at is None:
            raise VaultError(404, "KeyNotFound", f"Deleted Key not found: {name}")
        return key

    @app.post("/keys/{name}/create")
    async def create_key(name: str, request: Request) -> JSONResponse:
        guard(request, Action.CREATE, name)
        check_name(name)
        spec = _create_spec(await _body(request, KeyCreateParameters))
        existing = store.load(name)
        if existing is not None and existing.deleted_at is not None:
            raise VaultError(409, "Conflict", f"Key {name} is currently in a deleted but recoverable state, and its name "
                             "cannot be reused; either recover or purge it")  # fmt: skip
        version = store.new_version(name, spec)
        store.save(StoredKey(name, (*(existing.versions if existing else ()), version)))
        log.info("created key %s version %s (%s %d)", name, version.version, spec.kty, spec.key_size)
        return JSONResponse(_key_bundle(vault_url(request), version, recovery_level))

    @app.post("/keys/{name}/rotate")
    async def rotate_key(name: str, request: Request) -> JSONResponse:
        guard(request, Action.ROTATE, name)
        key = live_key(name)
        latest = key.latest
        # "Creates a new version of an existing key (with the same parameters)" (Azure's description of the
        # rotate action): the new version keeps the latest one's release policy, immutability included.
        spec = KeySpec(
            kty=latest.kty, key_size=latest.key_size, public_exponent=latest.public_numbers.e, key_ops=latest.key_ops,
            enabled=True, not_before=None, expires=None, exportable=latest.exportable,
            release_policy=latest.release_policy, policy_immutable=latest.policy_immutable, tags=latest.tags,
        )  # fmt: skip
        version = store.new_version(name, spec)
        store.save(StoredKey(name, (*key.versions, version)))
        log.info("rotated key %s: new version %s", name, version.version)
        return JSONResponse(_key_bundle(vault_url(request), version, recovery_level))

    @app.get("/keys")
    async def list_keys(request: Request) -> JSONResponse:
        guard(request, Action.READ)
        vault = vault_url(request)
        items = []
        for name in store.names():
            key = store.load(name)
            if key is None or key.deleted_at is not None:
                continue
            item: dict[str, Any] = {"kid": f"{vault}/keys/{name}", "attributes": _attributes(key.latest, recovery_level)}
            if key.latest.tags:
                item["tags"] = dict(key.latest.tags)
            items.append(item)
        return JSONResponse({"value": items, "nextLink": None})

    @app.get("/keys/{name}/versions")
    async def list_versions(name: str, request: Request) -> JSONResponse:
        guard(request, Action.READ, name)
        vault = vault_url(request)
        items = [
            {"kid": _key_id(vault, v), "attributes": _attributes(v, recovery_level), **({"tags": dict(v.tags)} if v.tags else {})}
            for v in live_key(name).versions
        ]
        return JSONResponse({"value": items, "nextLink": None})

    @app.get("/keys/{name}/{version:optseg}")
    async def get_key(name: str, version: str, request: Request) -> JSONResponse:
        guard(request, Action.READ, name, version)
        return JSONResponse(_key_bundle(vault_url(request), key_version(name, version), recovery_level))

    @app.patch("/keys/{name}/{version:optseg}")
    async def update_key(name: str, version: str, request: Request) -> JSONResponse:
        guard(request, Action.UPDATE, name, version)
        current = key_version(name, version)
        changes = _updated(current, await _body(request, KeyUpdateParameters))
        key = live_key(name)
        new = store.updated(current, **changes)
        store.save(StoredKey(name, tuple(new if v.version == current.version else v for v in key.versions)))
        log.info("updated key %s version %s: %s", name, current.version, ", ".join(sorted(changes)) or "nothing")
        return JSONResponse(_key_bundle(vault_url(request), new, recovery_level))

    @app.delete("/keys/{name}")
    async def delete_key(name: str, request: Request) -> JSONResponse:
        guard(request, Action.DELETE, name)
        key = live_key(name)
        deleted = StoredKey(name, key.versions, int(time.time()))
        store.save(deleted)
        log.info("deleted key %s (recoverable for %d days)", name, RECOVERABLE_DAYS)
        return JSONResponse(_deleted_bundle(vault_url(request), deleted, recovery_level))

    @app.get("/deletedkeys/{name}")
    async def get_deleted_key(name: str, request: Request) -> JSONResponse:
        guard(request, Action.READ, name)
        return JSONResponse(_deleted_bundle(vault_url(request), deleted_key(name), recovery_level))

    @app.delete("/deletedkeys/{name}")
    async def purge_deleted_key(name: str, request: Request) -> Response:
        guard(request, Action.PURGE, name)
        deleted_key(name)
        if config.purge_protection:
            # Azure's answer (403) and wording; with purge protection nobody purges, whatever their role.
            raise VaultError(403, "Forbidden", 'Operation "purge" is not allowed because purge protection is enabled for '
                             "this vault. Key Vault service will automatically purge it after the retention period has passed.")
        store.remove(name)
        log.info("purged key %s", name)
        return Response(status_code=204)

    @app.post("/deletedkeys/{name}/recover")
    async def recover_deleted_key(name: str, request: Request) -> JSONResponse:
        guard(request, Action.RECOVER, name)
        key = StoredKey(name, deleted_key(name).versions)
        store.save(key)
        log.info("recovered key %s", name)
        return JSONResponse(_key_bundle(vault_url(request), key.latest, recovery_level))

    @app.post("/keys/{name}/{version:optseg}/{operation}")
    async def key_operation(name: str, version: str, operation: str, request: Request) -> JSONResponse:
        if operation == "release":
            return await release_key(name, version, request)
        if operation not in _CRYPTO_OPERATIONS:
            raise VaultError(404, "BadParameter", f"{operation!r} is not a key operation of this vault")
        action, key_op, private = _CRYPTO_OPERATIONS[operation]
        guard(request, action, name, version)
        found = key_version(name, version)
        body = await _body(request, KeyOperationsParameters)
        algorithm = body.alg
        if algorithm not in _OAEP:
            raise _bad(f"Algorithm {algorithm!r} is not supported for {key_op} (supported: {', '.join(_OAEP)})")
        value = _unb64url(body.value, "value")
        if key_op not in found.key_ops:
            raise VaultError(403, "Forbidden", f"Operation {key_op} is not permitted on key {name}/{found.version}")
        unusable = found.usable_now()
        if unusable:
            raise VaultError(403, "Forbidden", f"Operation {key_op} is not allowed: {unusable}")
        try:
            if private:
                result = store.private_key(found).decrypt(value, _OAEP[algorithm])
            else:
                result = found.public_numbers.public_key().encrypt(value, _OAEP[algorithm])
        except ValueError:
            raise _bad(f"{key_op} with {algorithm} failed: the input is not valid for this key") from None
        return JSONResponse({"kid": _key_id(vault_url(request), found), "value": _b64url(result)})

    async def release_key(name: str, version: str, request: Request) -> JSONResponse:
        caller = guard(request, Action.RELEASE, name, version)
        found = key_version(name, version)
        body = await _body(request, KeyReleaseParameters)
        vault = vault_url(request)
        key_id = _key_id(vault, found)
        try:
            jws = releaser.release(
                found, store.private_key_der(found), key_id, target=body.target, enc=body.enc, nonce=body.nonce,
                api_version=request.query_params["api-version"], key_bundle=_key_bundle(vault, found, recovery_level),
            )  # fmt: skip
        except ReleaseRefused as exc:
            access_log.record(decision="release-denied", operation=Action.RELEASE.value, key=name,
                              version=found.version, identity=caller.name, oid=caller.object_id, reason=str(exc))  # fmt: skip
            log.warning("release of %s refused: %s", key_id, exc)
            code = "BadParameter" if exc.status == 400 else "Forbidden"
            raise VaultError(exc.status, code, str(exc)) from None
        access_log.record(decision="released", operation=Action.RELEASE.value, key=name, version=found.version,
                          identity=caller.name, oid=caller.object_id)  # fmt: skip
        log.info("released %s to identity %s", key_id, caller.name)
        return JSONResponse({"value": jws})

    return app
