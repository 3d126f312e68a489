"""Key Vault clients for the project: one place that builds ``KeyClient`` / ``CryptographyClient``.

Against Azure, pass an ``azure.identity`` credential and leave ``ca_bundle`` None (the system's trust
store). Against the local stack, :func:`key_client_from_stack_env` takes the vault URL, the CA bundle and
the named identity's credential from ``stack.env``. ``verify_challenge_resource=False`` is needed only
because the local vault is addressed by IP (``127.0.0.1``), which the SDK cannot match against the
challenge's resource (``https://vault.azure.net``); on Azure it stays on.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceModifiedError
from azure.keyvault.keys import KeyClient, KeyReleasePolicy, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from azure.storage.blob import BlobClient, ContainerClient

from securetrain.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.identity import LocalIdentityCredential
from securetrain.release_policy import ReleasePolicy, policy_matches
from securetrain.sealed import KekPublicKey, SealedHeader
from securetrain.sealed.errors import SealedFileError
from securetrain.sealed.header import KeyWrap, read_header
from securetrain.sealed.kek import WRAP_ALGORITHM

log = logging.getLogger(__name__)

KEK_NAME = "securetrain-kek"
KEK_SIZE = 3072
VAULT_URL_VARIABLE = "SECURETRAIN_KEYVAULT_URL"


def _is_local(vault_url: str) -> bool:
    host = vault_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost")


def key_client(vault_url: str, credential: TokenCredential, *, ca_bundle: str | os.PathLike[str] | None = None) -> KeyClient:
    """A ``KeyClient`` for ``vault_url``, verifying TLS against ``ca_bundle`` (None: the system store)."""
    return KeyClient(
        vault_url,
        credential,
        connection_verify=str(ca_bundle) if ca_bundle is not None else True,
        verify_challenge_resource=not _is_local(vault_url),
    )


def cryptography_client(
    key_id: str, credential: TokenCredential, *, ca_bundle: str | os.PathLike[str] | None = None
) -> CryptographyClient:
    """A ``CryptographyClient`` for the versioned ``key_id``, verifying TLS as :func:`key_client`."""
    return CryptographyClient(
        key_id,
        credential,
        connection_verify=str(ca_bundle) if ca_bundle is not None else True,
        verify_challenge_resource=not _is_local(key_id),
    )


def key_client_from_stack_env(env: Mapping[str, str], identity: str) -> KeyClient:
    """The local vault's ``KeyClient``, authenticated as ``identity`` (``pipeline``, ``cvm``, ``key-rotator``)."""
    try:
        vault_url, ca_bundle = env[VAULT_URL_VARIABLE], env["SECURETRAIN_CA_BUNDLE"]
    except KeyError as exc:
        raise ConfigurationError(f"stack.env lacks {exc.args[0]}: run `securetrain stack up`") from None
    return key_client(vault_url, LocalIdentityCredential.from_stack_env(env, identity), ca_bundle=ca_bundle)


def kek_public_key(key: KeyVaultKey) -> KekPublicKey:
    """The public half of a vault RSA key as the sealed format's KEK (its id is the versioned key URL)."""
    jwk = key.key
    if jwk.kty not in ("RSA", "RSA-HSM") or jwk.n is None or jwk.e is None or key.id is None:
        raise ConfigurationError(f"key {key.name} is not an RSA key (kty {jwk.kty}); a KEK is RSA")
    return KekPublicKey.from_modulus(jwk.n, jwk.e, key.id)


def fetch_kek_public_key(key_id: str, stack_env: Mapping[str, str] | None = None) -> KekPublicKey:
    """The KEK's public half from Key Vault by its key id (with a version, or the latest).

    The local stack's vault (``stack_env`` names it) is reached as its ``pipeline`` identity; any other
    vault with azure-identity's ``DefaultAzureCredential`` (a managed identity, the Azure CLI, ...).
    """
    ref = KeyVaultKeyIdentifier(key_id)
    if stack_env is not None and stack_env.get(VAULT_URL_VARIABLE, "").rstrip("/") == ref.vault_url.rstrip("/"):
        client = key_client_from_stack_env(stack_env, "pipeline")
    else:
        from azure.identity import DefaultAzureCredential  # deferred: only a real vault needs it

        client = key_client(ref.vault_url, DefaultAzureCredential())
    with client:
        return kek_public_key(client.get_key(ref.name, ref.version))


class KekPolicyMismatch(SecurityViolation):
    """The KEK exists, but Key Vault would release it under another policy than the approved one."""


def ensure_kek(client: KeyClient, name: str, approved: ReleasePolicy, *, update: bool = False) -> KeyVaultKey:
    """The KEK ``name``: created (exportable, RSA-HSM, released only under ``approved``) if absent.

    An existing KEK whose release policy is not ``approved`` is brought up to it when ``update`` is True
    (the vault's administrator, as ``securetrain stack up``), and otherwise refused with
    :class:`KekPolicyMismatch` (the pipeline: it must not train under a key whose policy it did not approve).
    """
    release_policy = KeyReleasePolicy(approved.to_bytes(), immutable=False)
    # Listing rather than catching get_key's 404: the error would keep its connection open (the
    # exception's traceback holds the response) and delay the vault's shutdown until it times out.
    if name not in {properties.name for properties in client.list_properties_of_keys()}:
        kek = client.create_rsa_key(
            name, size=KEK_SIZE, hardware_protected=True, exportable=True, release_policy=release_policy
        )
        log.info("created the KEK %s under the approved release policy (sha256 %s)", kek.id, approved.sha256)
        return kek
    kek = client.get_key(name)
    current = kek.properties.release_policy
    if current is not None and policy_matches(current.encoded_policy, approved):
        return kek
    if not update:
        raise KekPolicyMismatch(
            f"the KEK {kek.id} would be released under {'no' if current is None else 'another'} release policy than "
            f"the approved one (sha256 {approved.sha256}); have the vault's administrator set the approved policy, "
            "or approve the KEK's policy"
        )
    kek = client.update_key_properties(name, kek.properties.version, release_policy=release_policy)
    log.info("the KEK %s now carries the approved release policy (sha256 %s)", kek.id, approved.sha256)
    return kek


# --- KEK rotation over a container of sealed blobs ------------------------------------------------------

_HEADER_READ_BYTES = 1024 * 1024  # a sealed header is a few hundred bytes; its context is small


class RotationError(SecuretrainError):
    """A blob could not be rewrapped; the message names it and why."""


class RotationAccessDenied(RotationError, SecurityViolation):
    """The vault refused the rotator identity an unwrap: it lacks the role (Key Vault Crypto User)."""


@dataclass
class RotationReport:
    """What a rotation did: the new KEK version and each blob's outcome."""

    kek_id: str
    rewrapped: list[str] = field(default_factory=list)
    already_current: list[str] = field(default_factory=list)
    not_this_kek: list[str] = field(default_factory=list)
    changed_meanwhile: list[str] = field(default_factory=list)


def _read_blob_header(blob: BlobClient, etag: str, size: int) -> SealedHeader:
    head = blob.download_blob(
        offset=0, length=min(size, _HEADER_READ_BYTES), etag=etag, match_condition=MatchConditions.IfNotModified
    ).readall()
    try:
        return read_header(io.BytesIO(head))
    except SealedFileError as exc:
        raise RotationError(f"blob {blob.blob_name} is not a sealed file: {exc}") from None


def rewrap_blob(
    blob: BlobClient, new_kek: KekPublicKey, unwrap_client: Callable[[str], CryptographyClient]
) -> str:
    """Rewrap one sealed blob's data key to ``new_kek``; return 'rewrapped', 'current' or 'other-kek'.

    The DEK is unwrapped by the vault (``unwrapKey`` on the version that wrapped it), checked against the
    header's tag, wrapped to ``new_kek`` locally, and the blob is replaced by the new header plus its
    unchanged stream in one upload conditional on the ETag it had when read: a blob written by someone
    else meanwhile is left alone (``ResourceModifiedError``), and a crash leaves the old blob, whose
    key version still unwraps.
    """
    properties = blob.get_blob_properties()
    etag, size = properties.etag, properties.size
    header = _read_blob_header(blob, etag, size)
    if header.key.kek_id == new_kek.kek_id:
        return "current"
    old_id = KeyVaultKeyIdentifier(header.key.kek_id)
    new_id = KeyVaultKeyIdentifier(new_kek.kek_id)
    if (old_id.vault_url, old_id.name) != (new_id.vault_url, new_id.name):
        return "other-kek"
    unwrapped = unwrap_client(header.key.kek_id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, header.key.wrapped_dek)
    dek = unwrapped.key
    header.check_tag(dek)  # the vault gave back the key this header was sealed with
    new_header = header.with_key(
        KeyWrap(new_kek.kek_id, new_kek.thumbprint, WRAP_ALGORITHM, new_kek.wrap(dek))
    ).to_bytes()
    stream = blob.download_blob(offset=header.size, etag=etag, match_condition=MatchConditions.IfNotModified)
    blob.upload_blob(
        itertools.chain([new_header], stream.chunks()),
        length=len(new_header) + size - header.size,
        overwrite=True,
        metadata=properties.metadata,
        etag=etag,
        match_condition=MatchConditions.IfNotModified,
    )
    return "rewrapped"


def rewrap_blobs(
    blobs: Iterable[tuple[str, BlobClient]],
    new_kek: KekPublicKey,
    unwrap_client: Callable[[str], CryptographyClient],
) -> RotationReport:
    """Rewrap each sealed blob (named for the report) whose KEK is an older version of ``new_kek``'s key.

    One ETag-conditional replacement per blob (:func:`rewrap_blob`): a blob that changed meanwhile is left
    as it was and reported, so the rotation can be run again; every blob stays readable throughout.
    """
    report = RotationReport(new_kek.kek_id)
    outcomes = {"rewrapped": report.rewrapped, "current": report.already_current, "other-kek": report.not_this_kek}
    for name, blob in blobs:
        try:
            outcome = rewrap_blob(blob, new_kek, unwrap_client)
        except ResourceModifiedError:
            log.warning("%s changed while it was rewrapped: left as it is; run the rotation again", name)
            report.changed_meanwhile.append(name)
            continue
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise RotationAccessDenied(
                    f"the vault refused to unwrap the data key of {name}: {exc.message}; the rotating identity "
                    "needs the unwrap action (Key Vault Crypto User)"
                ) from None
            raise RotationError(f"rewrapping {name} failed: {exc.message}") from None
        outcomes[outcome].append(name)
        if outcome == "rewrapped":
            log.info("rewrapped %s to %s", name, new_kek.kek_id)
    return report


def rotate_container(
    container: ContainerClient,
    new_kek: KekPublicKey,
    unwrap_client: Callable[[str], CryptographyClient],
    *,
    prefix: str = "",
) -> RotationReport:
    """Rewrap every sealed blob under ``prefix`` whose KEK is an older version of ``new_kek``'s key."""
    items = container.list_blobs(name_starts_with=prefix or None)
    return rewrap_blobs(((item.name, container.get_blob_client(item.name)) for item in items), new_kek, unwrap_client)
