"""Key Vault clients for the project, the KEK's checks and creation, and the rewrap of sealed blobs' data keys.

Every ``KeyClient`` / ``CryptographyClient`` is built here, with the project's HTTP policy
(:mod:`securetrain.core.http`); :data:`KEY_VAULT_ERRORS` reads the SDK's errors. Why the challenge's resource
is not checked for a loopback vault, and only for one: docs/keys.md (:func:`challenge_resource_verified`).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceModifiedError
from azure.keyvault.keys import KeyClient, KeyReleasePolicy, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import CryptographyClient
from azure.storage.blob import BlobClient

from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.http import AzureErrors, azure_client_options
from securetrain.core.release_policy import ReleasePolicy, policy_matches
from securetrain.core.sealed import KekPublicKey, SealedHeader
from securetrain.core.sealed.errors import SealedFileError
from securetrain.core.sealed.header import KeyWrap, read_header
from securetrain.core.sealed.kek import WRAP_ALGORITHM
from securetrain.core.settings import ServiceSettings
from securetrain.core.storage import STORAGE_ERRORS

log = logging.getLogger(__name__)

KEK_NAME = "securetrain-kek"
KEK_SIZE = 3072


def challenge_resource_verified(url: str) -> bool:
    """Whether the SDK should check the challenge's resource against the vault at ``url``: always, except
    for a vault on a loopback address, which no Key Vault resource URI can name."""
    host = urlsplit(url).hostname
    if not host:
        raise ConfigurationError(f"{url!r} names no vault host")
    try:
        return host != "localhost" and not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, not an address
        return True


def key_client(vault_url: str, credential: TokenCredential, *, ca_bundle: str | os.PathLike[str] | None = None) -> KeyClient:
    """A ``KeyClient`` for ``vault_url``, verifying TLS against ``ca_bundle`` (None: the system store)."""
    return KeyClient(vault_url, credential, verify_challenge_resource=challenge_resource_verified(vault_url),
                     **azure_client_options(ca_bundle))  # fmt: skip


def cryptography_client(
    key_id: str, credential: TokenCredential, *, ca_bundle: str | os.PathLike[str] | None = None
) -> CryptographyClient:
    """A ``CryptographyClient`` for the versioned ``key_id``, verifying TLS as :func:`key_client`."""
    return CryptographyClient(key_id, credential, verify_challenge_resource=challenge_resource_verified(key_id),
                              **azure_client_options(ca_bundle))  # fmt: skip


@contextlib.contextmanager
def key_client_from_settings(settings: ServiceSettings, vault_url: str | None = None) -> Iterator[KeyClient]:
    """A ``KeyClient`` for ``vault_url`` (default ``$SECURETRAIN_KEYVAULT_URL``) as the process's identity; on
    leaving, the client and the credential made for it are closed."""
    with settings.credential() as credential, key_client(vault_url or settings.url("keyvault_url"), credential,
                                                         ca_bundle=settings.ca_bundle) as client:  # fmt: skip
        yield client


def kek_public_key(key: KeyVaultKey) -> KekPublicKey:
    """The public half of a vault RSA key as the sealed format's KEK (its id is the versioned key URL)."""
    jwk = key.key
    if jwk.kty not in ("RSA", "RSA-HSM") or jwk.n is None or jwk.e is None or key.id is None:
        raise ConfigurationError(f"key {key.name} is not an RSA key (kty {jwk.kty}); a KEK is RSA")
    return KekPublicKey.from_modulus(jwk.n, jwk.e, key.id)


def fetch_kek_public_key(key_id: str, settings: ServiceSettings) -> KekPublicKey:
    """The KEK's public half from the vault its key id names (with a version, or the latest), as the
    process's identity (any role that may read keys)."""
    ref = KeyVaultKeyIdentifier(key_id)
    with key_client_from_settings(settings, ref.vault_url) as client:
        return kek_public_key(client.get_key(ref.name, ref.version))


class KekPolicyMismatch(SecurityViolation):
    """The KEK exists, but Key Vault would release it under another policy than the approved one."""


class KekNotProvisioned(ConfigurationError):
    """No KEK of that name exists: its data owner has not created it."""


class KeyVaultAccessDenied(SecurityViolation):
    """Key Vault refused the identity an operation (401/403): its role does not allow it."""


#: Key Vault's errors: a refusal is :class:`KeyVaultAccessDenied`; the rest as :class:`AzureErrors` reads them.
KEY_VAULT_ERRORS = AzureErrors("Key Vault", KeyVaultAccessDenied, when_denied="the identity's role does not allow it")


def _policy_problem(kek: KeyVaultKey, approved: ReleasePolicy) -> str | None:
    """Why Key Vault would not release ``kek`` exactly under ``approved``; None when it would."""
    current = kek.properties.release_policy
    if current is None or not current.encoded_policy:
        return "it has no release policy"
    if not policy_matches(current.encoded_policy, approved):
        return "its release policy is not the approved one"
    if not current.immutable:
        return "its release policy is mutable (whoever may update the key could change it)"
    return None


def check_kek(client: KeyClient, name: str, approved: ReleasePolicy) -> KeyVaultKey:
    """The latest version of the KEK ``name``, checked: released only under ``approved``, immutably.

    The pipeline's check before it trains or rotates: it reads the key (Key Vault Reader) and never creates
    or changes one. Raises :class:`KekNotProvisioned` if there is no such key and
    :class:`KekPolicyMismatch` if its policy is another, or mutable.
    """
    # Listing rather than catching get_key's 404: the error would keep its connection open (the
    # exception's traceback holds the response) and delay the vault's shutdown until it times out.
    if name not in {properties.name for properties in client.list_properties_of_keys()}:
        raise KekNotProvisioned(
            f"the vault has no KEK named {name!r}: its data owner creates it under the approved release policy "
            "(locally `securetrain stack up` does, as the data-owner identity); the pipeline never creates keys"
        )
    return check_kek_version(client.get_key(name), approved)


def check_kek_version(kek: KeyVaultKey, approved: ReleasePolicy) -> KeyVaultKey:
    """``kek`` if Key Vault releases it exactly under ``approved``, immutably; :class:`KekPolicyMismatch` if not."""
    problem = _policy_problem(kek, approved)
    if problem is not None:
        raise KekPolicyMismatch(
            f"the KEK {kek.id} must not be used: {problem} (approved: sha256 {approved.sha256}). Only its data "
            "owner can fix this, by creating a new KEK version under the approved policy with an immutable "
            "release policy; the pipeline never creates or updates keys"
        )
    return kek


def versions_under_other_policies(client: KeyClient, name: str, approved: ReleasePolicy) -> set[str]:
    """The versioned ids of the KEK ``name`` whose release policy is not ``approved``: no approved TEE is
    released them, so what they wrap stays where it is until its data owner re-seals or deletes it."""
    other = set()
    for properties in client.list_properties_of_key_versions(name):
        policy = client.get_key(name, properties.version).properties.release_policy
        if policy is None or not policy.encoded_policy or not policy_matches(policy.encoded_policy, approved):
            other.add(str(properties.id))
    return other


def create_contract_kek(client: KeyClient, name: str, unbound: ReleasePolicy) -> KeyVaultKey:
    """The data owner's KEK for data to be pooled under a contract not signed yet.

    A contract pins the digests of the owners' manifests, which name the KEK version the data is sealed to, so
    the KEK exists before the contract does. ``unbound`` is the approved release policy requiring a contract
    no TEE can enforce (:data:`~securetrain.core.approved_release_policies.UNBOUND_CONTRACT`), so nothing is
    released until the owner binds this version to the signed contract (:func:`bind_kek_to_contract`); until
    then its policy is the one policy in this product that is not immutable.
    """
    policy = KeyReleasePolicy(unbound.to_bytes(), immutable=False)
    kek = client.create_rsa_key(name, size=KEK_SIZE, hardware_protected=True, exportable=True, release_policy=policy)
    log.info("created KEK version %s, released to no TEE until it is bound to a contract", kek.id)
    return kek


def bind_kek_to_contract(client: KeyClient, kek_id: str, bound: ReleasePolicy) -> KeyVaultKey:
    """The data owner's act once every party signed the contract: the KEK version ``kek_id`` released only under
    ``bound`` (the approved workload enforcing that contract), immutably from now on. Key Vault refuses (403)
    if the version's policy is immutable already."""
    key_id = KeyVaultKeyIdentifier(kek_id)
    kek = client.update_key_properties(key_id.name, key_id.version, release_policy=KeyReleasePolicy(bound.to_bytes(), immutable=True))
    log.info("KEK version %s is now released only under release policy sha256 %s (immutable)", kek.id, bound.sha256)
    return kek


def create_kek_version(client: KeyClient, name: str, approved: ReleasePolicy) -> KeyVaultKey:
    """The data owner's act: the KEK ``name`` whose latest version is released only under ``approved``.

    Creates the key (RSA-HSM 3072, exportable, the policy immutable) when it does not exist or when its
    latest version is released under anything else; a new version is how an approved policy changes, since
    no version's policy can. Older versions stay as they were: what they wrap needs a rewrap (docs/keys.md).
    """
    if name in {properties.name for properties in client.list_properties_of_keys()}:
        latest = client.get_key(name)
        if _policy_problem(latest, approved) is None:
            return latest
    # Immutable: nobody, the data owner included, can change the conditions under which this version is
    # released; a change of approved policy is a new version (Azure: "Once marked immutable, this flag cannot
    # be reset and the policy cannot be changed under any circumstances", KeyReleasePolicy in the REST API).
    policy = KeyReleasePolicy(approved.to_bytes(), immutable=True)
    kek = client.create_rsa_key(name, size=KEK_SIZE, hardware_protected=True, exportable=True, release_policy=policy)
    log.info("created KEK version %s under the approved release policy (sha256 %s, immutable)", kek.id, approved.sha256)
    return kek


# --- Rewrapping sealed blobs to a new KEK version (inside the TEE: securetrain/tee/agent/rewrap.py) ---------------

_HEADER_READ_BYTES = 1024 * 1024  # a sealed header is a few hundred bytes; its context is small

#: Turns a header's key wrap into the data key it wraps (in the TEE: with the released KEK version).
Unwrap = Callable[[KeyWrap], bytes]


class VersionUnavailable(SecuretrainError):
    """The KEK version a blob names cannot be had to unwrap it (Key Vault refused to release it)."""


@dataclass
class RotationReport:
    """What a rewrap did: the new KEK version and each blob's outcome.

    ``rewrapped``: the data key was unwrapped under the version the header named, checked against the
    header's tag and wrapped to ``kek_id``; ``already_current``: the header names ``kek_id`` and its data key
    unwraps under it and matches the tag; ``refused``: the data key did not unwrap or did not match the tag
    (the reason by blob); ``unreleasable``: the version the header names could not be had (the reason by
    blob). Blobs of the last two are left as they are.
    """

    kek_id: str
    rewrapped: list[str] = field(default_factory=list)
    already_current: list[str] = field(default_factory=list)
    not_this_kek: list[str] = field(default_factory=list)
    changed_meanwhile: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unreleasable: dict[str, str] = field(default_factory=dict)


def read_blob_header(blob: BlobClient, size: int, etag: str | None = None) -> SealedHeader:
    """The sealed header at the start of ``blob`` (``size`` bytes long), as of ``etag`` when given."""
    unchanged = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
    head = blob.download_blob(offset=0, length=min(size, _HEADER_READ_BYTES), **unchanged).readall()
    return read_header(io.BytesIO(head))


def same_key(kek_id: str, other: str) -> bool:
    """Whether two key ids name versions of the same key (vault and name); False for a malformed id."""
    try:
        a, b = KeyVaultKeyIdentifier(kek_id), KeyVaultKeyIdentifier(other)
    except ValueError:  # a header naming no Key Vault key is not a version of this one
        return False
    return (a.vault_url.rstrip("/"), a.name) == (b.vault_url.rstrip("/"), b.name)


def rewrap_blob(blob: BlobClient, new_kek: KekPublicKey, unwrap: Unwrap) -> str:
    """Rewrap one sealed blob's data key to ``new_kek``; return 'rewrapped', 'current' or 'other-kek'.

    ``unwrap`` opens the header's wrapped data key (with the KEK version the header names); the key is
    checked against the header's tag, also for a blob already on ``new_kek``. A blob of an older version is
    replaced by its new header plus its unchanged stream in one upload conditional on the ETag it had when
    read: a blob written by someone else meanwhile is left alone (``ResourceModifiedError``), and a crash
    leaves the old blob, whose key version still opens it.

    Raises:
        SealedFileError: the blob is not sealed, its data key does not unwrap, or does not match the tag.
    """
    properties = blob.get_blob_properties()
    etag, size = properties.etag, properties.size
    header = read_blob_header(blob, size, etag)
    if not same_key(header.key.kek_id, new_kek.kek_id):
        return "other-kek"
    dek = unwrap(header.key)
    header.check_tag(dek)  # the key unwrapped is the one this header was sealed with
    if header.key.kek_id == new_kek.kek_id:
        return "current"
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


def rewrap_blobs(blobs: Iterable[tuple[str, BlobClient]], new_kek: KekPublicKey, unwrap: Unwrap) -> RotationReport:
    """Rewrap each sealed blob (named for the report) whose KEK is an older version of ``new_kek``'s key.

    One ETag-conditional replacement per blob (:func:`rewrap_blob`): a blob that changed meanwhile is left
    as it was and reported, so the rotation can be run again; a blob whose data key does not open or match
    its header is refused and reported; every blob stays readable throughout.
    """
    report = RotationReport(new_kek.kek_id)
    outcomes = {"rewrapped": report.rewrapped, "current": report.already_current, "other-kek": report.not_this_kek}
    for name, blob in blobs:
        with STORAGE_ERRORS.translated("rewrap", f"blob {name}"):
            try:
                outcome = rewrap_blob(blob, new_kek, unwrap)
            except ResourceModifiedError:
                log.warning("%s changed while it was rewrapped: left as it is; run the rotation again", name)
                report.changed_meanwhile.append(name)
                continue
            except SealedFileError as exc:
                log.error("%s refused: %s", name, exc)
                report.refused[name] = str(exc)
                continue
            except VersionUnavailable as exc:
                log.warning("%s left as it is: %s", name, exc)
                report.unreleasable[name] = str(exc)
                continue
        outcomes[outcome].append(name)
        if outcome == "rewrapped":
            log.info("rewrapped %s to %s", name, new_kek.kek_id)
    return report
