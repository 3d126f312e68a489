"""ContractStore against the local stack's Azurite: what storage hands back is checked, never believed."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest

from securetrain.core.governance.in_force import ContractRevoked, verify_contract
from securetrain.core.governance.revocation import RevocationInvalid, revoke
from securetrain.core.governance.signatures import ContractSignatureMissing
from securetrain.core.governance.store import ContractStore, StoredContractInvalid
from securetrain.core.storage import BlobStore
from tests.contract_parties import NOW, Consortium

pytestmark = pytest.mark.integration


@pytest.fixture
def blobs(local_stack) -> Iterator[BlobStore]:
    with BlobStore.from_settings(local_stack.settings()) as blob_store:
        yield blob_store


@pytest.fixture
def container() -> str:
    return f"contracts-{uuid.uuid4().hex[:12]}"


def test_publish_read_revoke(blobs: BlobStore, container: str) -> None:
    consortium = Consortium()
    signed = consortium.signed()
    contracts = ContractStore(blobs, container)
    digest = contracts.publish(signed)
    assert contracts.publish(signed) == digest  # again: nothing changes
    assert contracts.read(digest) == signed
    assert verify_contract(contracts.read(digest), contracts.revocations(digest), NOW).signers == tuple(consortium.keys)
    token = revoke(signed.contract, "hospital-a", consortium.keys["hospital-a"], reason="study closed", at=NOW)
    assert contracts.add_revocation(digest, token) == f"{digest}/revocations/hospital-a.jws"
    with pytest.raises(ContractRevoked, match="'hospital-a'"):
        verify_contract(contracts.read(digest), contracts.revocations(digest), NOW)


def test_an_unsigned_contract_is_not_published_and_a_bad_revocation_not_stored(blobs: BlobStore, container: str) -> None:
    consortium = Consortium()
    contracts = ContractStore(blobs, container)
    with pytest.raises(ContractSignatureMissing):
        contracts.publish(consortium.signed(by=("hospital-a",)))
    digest = contracts.publish(consortium.signed())
    with pytest.raises(RevocationInvalid):
        contracts.add_revocation(digest, "not.a.revocation")
    assert contracts.revocations(digest) == {}


def test_what_storage_swapped_in_is_refused(blobs: BlobStore, container: str) -> None:
    consortium = Consortium()
    contracts = ContractStore(blobs, container)
    digest = contracts.publish(consortium.signed())
    other = Consortium().signed()
    blob = f"{digest}/contract.json"
    blobs.upload_stream(container, blob, io.BytesIO(other.to_bytes()), overwrite=True)
    with pytest.raises(StoredContractInvalid, match="holds contract"):
        contracts.read(digest)
    blobs.upload_stream(container, blob, io.BytesIO(b"{not json"), overwrite=True)
    with pytest.raises(StoredContractInvalid, match="is not a signed contract"):
        contracts.read(digest)
    # A revocation blob storage made up is refused by name when the contract is checked: it denies.
    blobs.upload_stream(container, f"{digest}/revocations/hospital-b.jws", io.BytesIO(b"\xff junk"))
    signed = consortium.signed()
    with pytest.raises(RevocationInvalid, match="hospital-b.jws"):
        verify_contract(signed, contracts.revocations(digest), NOW)
