"""ensure_kek: the KEK under exactly the approved release policy, against the stack's Key Vault stand-in."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from securetrain.keyvault import KekPolicyMismatch, ensure_kek, key_client_from_stack_env
from securetrain.release_policy import ReleasePolicy, policy_matches

pytestmark = pytest.mark.integration


def test_created_under_the_approved_policy_then_refused_under_another(local_stack) -> None:
    approved = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    document = approved.to_document()
    # Another policy: the same, but accepting any HOST_DATA (the condition list without its pin).
    loosened = json.loads(json.dumps(document).replace('"x-ms-sevsnpvm-hostdata"', '"x-ms-sevsnpvm-vmpl"'))
    other = ReleasePolicy.parse(loosened)
    name = f"kek-{uuid.uuid4().hex[:8]}"
    with key_client_from_stack_env(local_stack.env, "pipeline") as client:
        created = ensure_kek(client, name, other)
        assert policy_matches(created.properties.release_policy.encoded_policy, other)
        with pytest.raises(KekPolicyMismatch, match="another release policy than the approved one"):
            ensure_kek(client, name, approved)
        updated = ensure_kek(client, name, approved, update=True)
        assert policy_matches(updated.properties.release_policy.encoded_policy, approved)
        assert ensure_kek(client, name, approved).id == updated.id
