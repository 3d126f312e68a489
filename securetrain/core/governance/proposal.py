"""A contract proposal: terms the parties agreed on in words, completed with what only tooling knows.

A terms file is a contract (:class:`~securetrain.core.governance.contract.TrainingContract`'s JSON) that may
leave out what is known only when the contract is made: each party's signing key, the dataset versions (with
the digests of their signed manifests) and KEKs, the recipients' model keys, the approved workloads, and the
validity. :func:`propose` fills those in, validates the whole contract and returns it unsigned. A value given
both in the terms and here is refused rather than silently replaced: the parties agreed on the terms.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securetrain.core.approved_release_policies import ReferenceValues
from securetrain.core.governance.contract import (
    ContractInvalid,
    SigningKey,
    TrainingContract,
    format_time,
    workload_json,
)
from securetrain.core.governance.signatures import SignedContract


def _entries(document: dict[str, Any], *path: str) -> list[Any]:
    """The array at ``path`` in ``document`` (created empty if absent)."""
    holder = document
    for key in path[:-1]:
        holder = holder.setdefault(key, {})
        if not isinstance(holder, dict):
            raise ContractInvalid(key, "must be a JSON object")
    entries = holder.setdefault(path[-1], [])
    if not isinstance(entries, list):
        raise ContractInvalid(".".join(path), "must be a JSON array")
    return entries


def _entry(document: dict[str, Any], path: tuple[str, ...], id_key: str, wanted: str) -> tuple[str, dict[str, Any]]:
    """The object in the array at ``path`` whose ``id_key`` is ``wanted``, and its field path."""
    for index, entry in enumerate(_entries(document, *path)):
        if isinstance(entry, dict) and entry.get(id_key) == wanted:
            return f"{'.'.join(path)}[{index}]", entry
    raise ContractInvalid(".".join(path), f"the terms name no {id_key} {wanted!r}")


def _fill(entry: dict[str, Any], at: str, key: str, value: Any) -> None:
    if key in entry:
        raise ContractInvalid(f"{at}.{key}" if at else key, "is given both in the terms and by the proposer; give it once")
    entry[key] = value


def propose(
    terms: Mapping[str, Any],
    party_keys: Mapping[str, Ed25519PublicKey] | None = None,
    dataset_versions: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    keks: Mapping[str, str] | None = None,
    recipient_keys: Mapping[str, str] | None = None,
    not_before: datetime.datetime | None = None,
    expires: datetime.datetime | None = None,
    workloads: Sequence[ReferenceValues] = (),
) -> SignedContract:
    """The contract of ``terms`` (a decoded terms file) completed with:

    - ``party_keys``: each party's Ed25519 public key, by party id;
    - ``dataset_versions``: (version, manifest SHA-256) pairs by dataset id, added to those the terms pin;
    - ``keks``: the Key Vault key URL of each dataset, by dataset id;
    - ``recipient_keys``: the RSA public key (PEM) the model is sealed to, by consumer party id (a party not
      yet listed as a recipient is added);
    - ``not_before`` (default now) and ``expires``: the validity, if ``expires`` is given;
    - ``workloads``: the approved workloads' reference values.

    Returns the validated contract with no signatures.

    Raises:
        ContractInvalid: naming the field that is missing, given twice, or wrong.
    """
    document = copy.deepcopy(dict(terms))
    for party_id, key in (party_keys or {}).items():
        at, party = _entry(document, ("parties",), "id", party_id)
        _fill(party, at, "signing_key", SigningKey.of(key).to_json())
    for dataset_id, versions in (dataset_versions or {}).items():
        at, dataset = _entry(document, ("datasets",), "dataset_id", dataset_id)
        _entries(dataset, "versions").extend({"version": version, "manifest_sha256": digest} for version, digest in versions)
    for dataset_id, kek in (keks or {}).items():
        at, dataset = _entry(document, ("datasets",), "dataset_id", dataset_id)
        _fill(dataset, at, "kek", kek)
    for party_id, pem in (recipient_keys or {}).items():
        recipients = _entries(document, "outputs", "recipients")
        if not any(isinstance(entry, dict) and entry.get("party") == party_id for entry in recipients):
            recipients.append({"party": party_id})
        at, recipient = _entry(document, ("outputs", "recipients"), "party", party_id)
        _fill(recipient, at, "public_key", pem)
    if workloads:
        _fill(document, "", "workloads", [workload_json(workload) for workload in workloads])
    if expires is not None:
        start = not_before or datetime.datetime.now(datetime.UTC)
        _fill(document, "", "validity", {"not_before": format_time(start), "expires": format_time(expires)})
    elif not_before is not None:
        raise ContractInvalid("validity.expires", "a proposal that sets not_before must set expires too")
    return SignedContract(contract=TrainingContract.from_json(document), signatures=())
