"""The KEK under exactly the approved release policy, immutably: the data owner makes it, the pipeline checks it.

Against the stack's Key Vault stand-in. The data owner's ``create_kek_version`` is how an approved policy
changes (a new version: no version's policy can change); the pipeline's ``check_kek`` never creates or
updates anything and refuses any other policy.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from securetrain.core.keyvault import KekPolicyMismatch, check_kek, create_kek_version, key_client_from_settings
from securetrain.core.release_policy import ReleasePolicy, policy_matches

pytestmark = pytest.mark.integration


def test_created_under_the_approved_policy_then_refused_under_another(local_stack) -> None:
    approved = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    document = approved.to_document()
    # Another policy: the same, but accepting any HOST_DATA (the condition list without its pin).
    loosened = json.loads(json.dumps(document).replace('"x-ms-sevsnpvm-hostdata"', '"x-ms-sevsnpvm-vmpl"'))
    other = ReleasePolicy.parse(loosened)
    name = f"kek-{uuid.uuid4().hex[:8]}"
    with key_client_from_settings(local_stack.settings("data-owner")) as owner, \
            key_client_from_settings(local_stack.settings("pipeline")) as pipeline:  # fmt: skip
        created = create_kek_version(owner, name, other)
        assert policy_matches(created.properties.release_policy.encoded_policy, other)
        assert created.properties.release_policy.immutable is True
        assert check_kek(pipeline, name, other).id == created.id
        with pytest.raises(KekPolicyMismatch, match="not the approved one.*data owner"):
            check_kek(pipeline, name, approved)
        # The approved policy changes: the owner makes a new version; the old one keeps its policy.
        updated = create_kek_version(owner, name, approved)
        assert updated.id != created.id and policy_matches(updated.properties.release_policy.encoded_policy, approved)
        old = owner.get_key(name, created.properties.version)
        assert policy_matches(old.properties.release_policy.encoded_policy, other)
        assert check_kek(pipeline, name, approved).id == updated.id
        assert create_kek_version(owner, name, approved).id == updated.id  # nothing to change: no new version
