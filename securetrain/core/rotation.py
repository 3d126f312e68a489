"""KEK rotation: the blobs it concerns, the TEE's signed statement of its rewrap, and the checks outside the TEE.

The ``key-rotator`` identity makes a new version, the TEE rewraps (:mod:`securetrain.tee.agent.rewrap`) and
signs :func:`rewrap_statement`, and the pipeline checks the TEE's answer (:func:`verify_rewrap_answer`) and
then every header itself (:func:`verify_rotated_headers`), never unwrapping anything: docs/keys.md ("Rotation").
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from azure.storage.blob import BlobClient

from securetrain.core.attestation.azure_guest import token_nonce
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator, ValidatedToken
from securetrain.core.errors import SecuretrainError, SecurityViolation
from securetrain.core.keyvault import RotationReport, read_blob_header, same_key
from securetrain.core.model_provenance import ProvenanceInvalid, rsa_public_key_from_jwk, verify_statement_signature
from securetrain.core.release_policy import ReleasePolicy, evaluate
from securetrain.core.sealed import KekPublicKey, SealedHeader
from securetrain.core.sealed.errors import SealedFileError
from securetrain.core.sealed.header import MAGIC
from securetrain.core.storage import STORAGE_ERRORS, BlobStore, ContainerNotFound

if TYPE_CHECKING:  # the TEE imports this module too, and never calls itself
    from securetrain.core.cvm_client import CvmClient

log = logging.getLogger(__name__)

#: What the TEE's signed rewrap statement is (its ``schema`` field).
REWRAP_SCHEMA = "securetrain.tee-rewrap/v1"
_ANSWER_FIELDS = {"statement", "tee_signature", "attestation_token"}


class RewrapNotVerified(SecurityViolation):
    """The TEE's rewrap answer is not a statement the approved TEE signed for this request."""


class RotationNotVerified(SecurityViolation):
    """After the rotation a sealed blob does not name the new KEK version or does not parse, or the TEE
    refused to rewrap a blob whose data key did not open or did not match its header."""


class RotationIncomplete(SecuretrainError):
    """Some blobs changed while the TEE rewrapped them; they were left as they were. Transient: run again."""


def sealed_blobs(store: BlobStore, containers: Iterable[str]) -> Iterator[tuple[str, BlobClient]]:
    """``("container/blob", client)`` for every blob of ``containers`` that starts with the sealed magic.

    Manifests and reports do not; a container that does not exist has none.
    """
    for container in containers:
        client = store.container_client(container)
        try:
            # Sizes first: a ranged read of an empty blob is an error, and an empty blob is not sealed.
            names = [info.name for info in store.list_blobs(container) if info.size >= len(MAGIC)]
        except ContainerNotFound:
            continue
        for name in names:
            blob = client.get_blob_client(name)
            with STORAGE_ERRORS.translated("read the start of", f"blob {container}/{name}"):
                head = blob.download_blob(offset=0, length=len(MAGIC)).readall()
            if head == MAGIC:
                yield f"{container}/{name}", blob


def rewrap_statement(
    report: RotationReport, *, nonce: str, containers: Iterable[str], released_versions: Iterable[str]
) -> dict[str, Any]:
    """What the TEE signs after a rewrap: which data keys it checked, what it rewrote, what it refused.

    ``dek_checked`` lists every blob whose data key the TEE unwrapped (under the version its header named)
    and matched against the header's tag: the rewrapped ones and those already on ``kek_id``. ``unreleasable``
    names the blobs whose version Key Vault would not release to the TEE, with its reason.
    """
    return {
        "schema": REWRAP_SCHEMA,
        "kek_id": report.kek_id,
        "nonce": nonce,
        "containers": list(containers),
        "released_versions": sorted(released_versions),
        "dek_checked": sorted([*report.rewrapped, *report.already_current]),
        "rewrapped": sorted(report.rewrapped),
        "already_current": sorted(report.already_current),
        "not_this_kek": sorted(report.not_this_kek),
        "changed_meanwhile": sorted(report.changed_meanwhile),
        "refused": dict(sorted(report.refused.items())),
        "unreleasable": dict(sorted(report.unreleasable.items())),
    }


def approved_tee_validator(attestation_endpoint: str, verify: str | bool, approved: ReleasePolicy) -> Callable[[str], ValidatedToken]:
    """A ``validate`` for :func:`verify_rewrap_answer` outside Airflow (whose ``AttestationHook`` does the same):
    the token is the attestation service's (keys fetched over TLS verified against ``verify``: a CA bundle,
    or True for the system's roots), and its claims are a TEE Key Vault would release the KEK to under ``approved``."""
    validator = TokenValidator(AuthorityKeys(attestation_endpoint, verify=verify))

    def validate(raw: str) -> ValidatedToken:
        token = validator.validate(raw)
        evaluate(approved, token.claims)
        return token

    return validate


def verify_rewrap_answer(
    answer: Any, *, kek_id: str, nonce: str, containers: Iterable[str], validate: Callable[[str], ValidatedToken]
) -> dict[str, Any]:
    """The TEE's rewrap statement, once it is shown to answer this request and to be signed by the approved TEE.

    ``validate`` checks the attestation token (its signature by the attestation service, issuer, lifetime)
    and that its claims satisfy the approved release policy (the workload Key Vault releases the KEK to),
    raising a :class:`SecurityViolation` if not. Then: the token carries Airflow's ``nonce`` (fresh, not a
    replay), exactly one runtime key, and that key's signature over the statement verifies; the statement
    names ``kek_id``, ``nonce`` and ``containers``.
    """
    if not isinstance(answer, Mapping) or set(answer) != _ANSWER_FIELDS:
        raise RewrapNotVerified(f"the TEE's rewrap answer is not an object of exactly {sorted(_ANSWER_FIELDS)}")
    statement, signature, raw_token = answer["statement"], answer["tee_signature"], answer["attestation_token"]
    if not isinstance(statement, Mapping) or not isinstance(signature, Mapping) or not isinstance(raw_token, str):
        raise RewrapNotVerified("the TEE's rewrap answer has a statement, signature or token of the wrong type")
    token = validate(raw_token)
    if token.claims.get("nonce") != token_nonce(nonce, token.claims):
        raise RewrapNotVerified("the TEE's attestation token does not carry the nonce of this request: a replayed answer")
    if len(token.runtime_keys) != 1:
        raise RewrapNotVerified("the TEE's attestation token does not carry exactly one runtime key")
    try:
        verify_statement_signature(rsa_public_key_from_jwk(token.runtime_keys[0]), statement, signature)
    except ProvenanceInvalid as exc:
        raise RewrapNotVerified(f"the rewrap statement is not signed by the attested TEE key: {exc}") from None
    expected = {"schema": REWRAP_SCHEMA, "kek_id": kek_id, "nonce": nonce, "containers": list(containers)}
    wrong = sorted(name for name, value in expected.items() if statement.get(name) != value)
    if wrong:
        raise RewrapNotVerified(f"the TEE's rewrap statement does not answer this request: {', '.join(wrong)} differ")
    return dict(statement)


def _header(name: str, blob: BlobClient) -> SealedHeader:
    try:
        with STORAGE_ERRORS.translated("read the header of", f"blob {name}"):
            size = blob.get_blob_properties().size
            header = read_blob_header(blob, size)
    except SealedFileError as exc:
        raise RotationNotVerified(f"{name} starts like a sealed file but: {exc}") from None
    if header.sealed_length != size:
        raise RotationNotVerified(f"{name} is {size} bytes; its header says {header.sealed_length}")
    return header


def verify_rotated_headers(
    store: BlobStore, new_kek: KekPublicKey, containers: Iterable[str], *, other_policies: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """The sealed blobs of ``new_kek``'s key in ``containers``, each checked: its header parses, names
    ``new_kek``'s version and thumbprint, and states the blob's actual length. Reads headers only.

    A blob may stay on a version of ``other_policies`` (the versions whose release policy is not the approved
    one: no approved TEE can open or rewrap them). Returns the blobs verified and the blobs left so.

    Raises:
        RotationNotVerified: naming every other blob that failed.
    """
    problems, verified, left = [], [], []
    stale = set(other_policies)
    for name, blob in sealed_blobs(store, containers):
        header = _header(name, blob)
        if not same_key(header.key.kek_id, new_kek.kek_id):
            continue
        if header.key.kek_id in stale:
            left.append(name)
        elif header.key.kek_id != new_kek.kek_id:
            problems.append(f"{name} is still wrapped for {header.key.kek_id} (written during the rotation by a run "
                            "that started before it? rotate again with resume)")  # fmt: skip
        elif header.key.kek_thumbprint != new_kek.thumbprint:
            problems.append(f"{name} names {new_kek.kek_id} but another public key (thumbprint {header.key.kek_thumbprint})")
        else:
            verified.append(name)
    if problems:
        raise RotationNotVerified("after the rotation: " + "; ".join(problems))
    log.info("every sealed blob of the key (%d) names %s; %d left on versions under another release policy",
             len(verified), new_kek.kek_id, len(left))  # fmt: skip
    return verified, left


def rewrap_in_tee(
    cvm: CvmClient, kek_id: str, containers: Iterable[str], validate: Callable[[str], ValidatedToken]
) -> dict[str, Any]:
    """Have the TEE rewrap every sealed blob of ``containers`` to ``kek_id`` (``POST /v1/rewraps``, with a
    fresh nonce); its statement, once :func:`verify_rewrap_answer` accepted it."""
    names = list(containers)
    nonce = secrets.token_urlsafe(32)
    answer = cvm.rewrap(kek_id=kek_id, containers=names, nonce=nonce)
    statement = verify_rewrap_answer(answer, kek_id=kek_id, nonce=nonce, containers=names, validate=validate)
    log.info("the TEE rewrapped %d blob(s) to %s and checked %d data key(s)", len(statement["rewrapped"]), kek_id,
             len(statement["dek_checked"]))  # fmt: skip
    return statement


def require_complete(statement: Mapping[str, Any]) -> None:
    """Raise unless the TEE's rewrap left nothing behind: :class:`RotationNotVerified` for blobs it refused
    (their data key did not open, or did not match the header), :class:`RotationIncomplete` for blobs that
    changed meanwhile (run the rotation again: it resumes)."""
    if statement["refused"]:
        refused = "; ".join(f"{name}: {reason}" for name, reason in statement["refused"].items())
        raise RotationNotVerified(f"the TEE refused to rewrap {len(statement['refused'])} blob(s), left as they are: {refused}")
    if statement["changed_meanwhile"]:
        raise RotationIncomplete(
            f"{len(statement['changed_meanwhile'])} blob(s) changed while the TEE rewrapped them and were left as they "
            f"were: {', '.join(statement['changed_meanwhile'])}; run the rotation again (with resume) to finish them"
        )


def verify_rotation(
    store: BlobStore,
    new_kek: KekPublicKey,
    statement: Mapping[str, Any],
    containers: Iterable[str],
    *,
    other_policies: Iterable[str] = (),
) -> dict[str, Any]:
    """After the TEE's rewrap: every sealed blob of the key names ``new_kek``, or a version of
    ``other_policies`` (:func:`verify_rotated_headers`); a summary that says how many of them the TEE checked
    (a blob sealed for ``new_kek`` after the rewrap, by a training run, say, was not among them) and which
    were left on a version under another release policy, for their data owner to re-seal or delete."""
    verified, left = verify_rotated_headers(store, new_kek, containers, other_policies=other_policies)
    checked = set(statement["dek_checked"])
    return {
        "kek_id": new_kek.kek_id,
        "verified": len(verified),
        "dek_checked_in_tee": len(checked.intersection(verified)),
        "sealed_after_the_rewrap": sorted(set(verified) - checked),
        "left_under_another_policy": sorted(left),
    }
