"""The maintenance DAGs under `airflow dags test` against the real local stack, and rotation's crash safety.

key_rotation rotates a KEK of the test's own (the stack's KEK is left alone: other tests' datasets name
it), so that its sealed blobs in the pipeline's containers are the ones the TEE rewraps. retention refuses a
policy that would delete the newest model version and deletes nothing, lists in a dry run, deletes for
real otherwise. access_review writes its reports. Each run's audit log records what it did.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyReleasePolicy

from securetrain.localstack.airflow_env import airflow_environment, migrate, run_airflow
from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import BlobAuditStore
from securetrain.core.keyvault import fetch_kek_public_key, kek_public_key, key_client_from_settings, rewrap_blob
from securetrain.core.model_registry import MANIFEST_SCHEMA, REGISTRY_CONTAINER, ModelRegistry, manifest_blob
from securetrain.core.sealed import KekPublicKey, inspect, seal
from securetrain.core.storage import BlobStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dags_test(state_dir: Path, dag_id: str, conf: dict | None = None, overrides: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = ["dags", "test", dag_id] + (["--conf", json.dumps(conf)] if conf else [])
    return run_airflow(state_dir, args, capture_output=True, overrides=overrides)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def audit_events(local_stack, log_name: str) -> list[dict]:
    with BlobAuditStore.from_settings(local_stack.settings(), log_name) as store:
        log = AuditLog(store)
        log.verify(load_or_create_signing_key(local_stack.layout.audit_signing_key).public_key())
        return [entry.event.to_json() for entry in log.entries()]


def sealed_bytes(kek: KekPublicKey, data: bytes, context: dict[str, str]) -> bytes:
    out = io.BytesIO()
    seal(io.BytesIO(data), out, kek, context, segment_size=65536)
    return out.getvalue()


@pytest.fixture(scope="module")
def airflow_ready(local_stack) -> Path:
    migrate(local_stack.state_dir)
    return local_stack.state_dir


@pytest.fixture
def store(local_stack) -> Iterator[BlobStore]:
    with BlobStore.from_settings(local_stack.settings()) as blobs:
        for container in ("datasets", "checkpoints", "models", "model-registry", "reports"):
            blobs.ensure_container(container)
        yield blobs


@pytest.fixture
def test_kek(local_stack) -> KekPublicKey:
    """A KEK of the test's own, made by the data owner under the stack's approved release policy."""
    with key_client_from_settings(local_stack.settings("data-owner")) as keys:
        policy = Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes()
        key = keys.create_rsa_key(f"kek-{uuid.uuid4().hex[:8]}", size=2048, exportable=True,
                                  release_policy=KeyReleasePolicy(policy, immutable=True))  # fmt: skip
    return kek_public_key(key)


def _key_name(kek: KekPublicKey) -> str:
    return kek.kek_id.split("/keys/", 1)[1].split("/", 1)[0]


def _plant(store: BlobStore, kek: KekPublicKey, prefix: str) -> dict[tuple[str, str], bytes]:
    """Sealed blobs for ``kek`` in three pipeline containers, and a plain manifest beside them."""
    planted = {}
    for container, name in (("datasets", f"{prefix}/part-0.sealed"), ("checkpoints", f"{prefix}/epoch-1.sealed"),
                            ("models", f"{prefix}/model.sealed")):  # fmt: skip
        body = sealed_bytes(kek, f"{container} {name}".encode() * 5000, {"kind": container})
        store.upload_stream(container, name, io.BytesIO(body), length=len(body))
        planted[(container, name)] = body
    manifest = json.dumps({"not": "sealed"}).encode()
    store.upload_stream("datasets", f"{prefix}/manifest.json", io.BytesIO(manifest), length=len(manifest))
    return planted


def _stream_of(body: bytes) -> bytes:
    return body[inspect(io.BytesIO(body)).size :]


def _connection_as(local_stack, identity: str) -> dict[str, str]:
    """The ``securetrain_keyvault_rotator`` connection, authenticated as another identity."""
    connection = json.loads(airflow_environment(local_stack.state_dir)["AIRFLOW_CONN_SECURETRAIN_KEYVAULT_ROTATOR"])
    settings = local_stack.settings(identity)
    connection["login"], connection["password"] = settings.client_id, settings.client_secret.get_secret_value()
    return {"AIRFLOW_CONN_SECURETRAIN_KEYVAULT_ROTATOR": json.dumps(connection)}


def test_key_rotation_rewraps_every_sealed_blob_of_the_key_verifies_and_audits(airflow_ready, local_stack, store, test_kek) -> None:
    prefix = f"rotation-{uuid.uuid4().hex[:8]}"
    planted = _plant(store, test_kek, prefix)
    result = dags_test(airflow_ready, "key_rotation", {"key": _key_name(test_kek)})
    text = output(result)
    assert result.returncode == 0, text[-8000:]
    assert re.search(r"Marking run <DagRun key_rotation .*> successful", text)
    new_id = re.search(r"new KEK version (\S+)", text).group(1)
    assert new_id != test_kek.kek_id and new_id.startswith(test_kek.kek_id.rsplit("/", 1)[0])
    for (container, name), before in planted.items():
        after = b"".join(store.download_chunks(container, name))
        assert inspect(io.BytesIO(after)).key.kek_id == new_id, name
        assert _stream_of(after) == _stream_of(before)  # the data was not re-encrypted
    log_name = re.search(r"rotation recorded in audit log (\S+):", text).group(1)
    rotations = [event for event in audit_events(local_stack, log_name) if event["kind"] == "rotation"]
    details = rotations[0]["details"]
    assert details["kek_id"] == new_id and details["complete"] is True
    # The TEE rewrapped the three blobs and checked each data key; Airflow verified every header.
    assert details["rewrapped"] >= 3 and details["dek_checked_in_tee"] >= 3 and details["verified"] >= 3
    assert set(details["released_versions"]) == {new_id, test_kek.kek_id}


def test_a_rotation_that_fails_is_audited_as_incomplete_and_leaves_the_blobs_as_they_were(
    airflow_ready, local_stack, store, test_kek
) -> None:
    prefix = f"refused-{uuid.uuid4().hex[:8]}"
    planted = _plant(store, test_kek, prefix)
    # The pipeline identity only reads keys: as the "rotator" it cannot even make the new version.
    result = dags_test(airflow_ready, "key_rotation", {"key": _key_name(test_kek)},
                       overrides=_connection_as(local_stack, "pipeline"))  # fmt: skip
    text = output(result)
    assert result.returncode != 0
    assert re.search(r"Marking run <DagRun key_rotation .*> failed", text)
    assert "KeyVaultAccessDenied: Key Vault refused to make a new version of KEK" in text, text[-8000:]
    assert "as connection 'securetrain_keyvault_rotator'" in text
    assert "keys/rotate/action" in text
    for (container, name), before in planted.items():
        assert b"".join(store.download_chunks(container, name)) == before  # untouched, still opens under its version
    with key_client_from_settings(local_stack.settings("pipeline")) as keys:
        assert len(list(keys.list_properties_of_key_versions(_key_name(test_kek)))) == 1
    log_name = re.search(r"rotation recorded in audit log (\S+):", text).group(1)
    [event] = [e for e in audit_events(local_stack, log_name) if e["kind"] == "rotation"]
    assert event["details"]["complete"] is False and event["details"]["kek_id"] is None


def test_an_interrupted_rotation_leaves_every_blob_readable_and_resumes(local_stack, store, test_kek) -> None:
    from securetrain.airflow.maintenance import SEALED_CONTAINERS
    from securetrain.core.release_policy import ReleasePolicy
    from securetrain.core.rotation import RotationNotVerified, approved_tee_validator, rewrap_in_tee, verify_rotated_headers, verify_rotation
    from tests.jobs import released_kek

    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    planted = _plant(store, test_kek, prefix)
    time.sleep(1.1)  # Key Vault's creation times are whole seconds: the rotated version must be the newer one
    with key_client_from_settings(local_stack.settings("key-rotator")) as keys:
        new_kek = kek_public_key(keys.rotate_key(_key_name(test_kek)))
    versions = {kek.kek_id: released_kek(local_stack, kek.kek_id) for kek in (test_kek, new_kek)}  # as the TEE has them

    def tee_unwrap(key):
        return versions[key.kek_id].unwrap(key.wrapped_dek, kek_id=key.kek_id, kek_thumbprint=key.kek_thumbprint)

    # The "crash": only the first blob was rewrapped before the rotation stopped.
    first = ("datasets", f"{prefix}/part-0.sealed")
    assert rewrap_blob(store.container_client(first[0]).get_blob_client(first[1]), new_kek, tee_unwrap) == "rewrapped"
    # Every blob still opens: the rewrapped one under the new version, the others under the old one.
    for container, name in planted:
        header = inspect(io.BytesIO(b"".join(store.download_chunks(container, name))))
        header.check_tag(tee_unwrap(header.key))
    with pytest.raises(RotationNotVerified, match=rf"checkpoints/{prefix}/epoch-1.sealed is still wrapped for"):
        verify_rotated_headers(store, new_kek, SEALED_CONTAINERS)
    # Resuming in the TEE rewraps what is left and only checks what is done.
    with local_stack.settings().agent() as cvm:
        approved = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
        validate = approved_tee_validator(local_stack.env["SECURETRAIN_ATTESTATION_ENDPOINT"], str(local_stack.ca_bundle), approved)
        statement = rewrap_in_tee(cvm, new_kek.kek_id, SEALED_CONTAINERS, validate)
    assert f"datasets/{prefix}/part-0.sealed" in statement["already_current"]
    assert {f"checkpoints/{prefix}/epoch-1.sealed", f"models/{prefix}/model.sealed"} <= set(statement["rewrapped"])
    assert verify_rotation(store, new_kek, statement, SEALED_CONTAINERS)["verified"] >= 3


@pytest.fixture
def registered_model(local_stack, store) -> str:
    """A model version in the registry's layout, the newest (only) version of its name.

    Written as the registry lays a version out (a sealed model stored by digest, a manifest naming it)
    rather than through ``ModelRegistry.register``, which needs a statement signed in an attested TEE
    (the secure_training e2e test registers that way); retention reads only this layout.
    """
    kek = fetch_kek_public_key(local_stack.env["SECURETRAIN_KEK_ID"], local_stack.settings())
    name = f"retention-test-{uuid.uuid4().hex[:8]}"
    body = sealed_bytes(kek, b"model weights" * 1000, {"kind": "model", "run_id": name})
    digest = hashlib.sha256(body).hexdigest()
    model_blob = f"{name}/sealed/{digest}.sealed"
    store.upload_stream(REGISTRY_CONTAINER, model_blob, io.BytesIO(body), length=len(body))
    manifest = json.dumps({"schema": MANIFEST_SCHEMA, "name": name, "version": 1,
                           "sealed_model": {"blob": model_blob, "sha256": digest}}).encode()  # fmt: skip
    store.upload_stream(REGISTRY_CONTAINER, manifest_blob(name, 1), io.BytesIO(manifest), length=len(manifest))
    assert ModelRegistry(store).versions(name) == [1]
    return name


def test_retention_refuses_to_delete_the_newest_model_lists_in_a_dry_run_and_deletes(
    airflow_ready, local_stack, store, registered_model
) -> None:
    checkpoint = f"retention-{uuid.uuid4().hex[:8]}/epoch-1.sealed"
    store.upload_stream("checkpoints", checkpoint, io.BytesIO(b"an old checkpoint"), length=17)
    manifest = manifest_blob(registered_model, 1)

    every_model = {"model-registry": {"max_age_days": 0}, "checkpoints": {"max_age_days": 0}}
    result = dags_test(airflow_ready, "retention", {"dry_run": False, "policy": every_model})
    text = output(result)
    assert result.returncode != 0
    assert re.search(rf"NewestModelProtected: .*{registered_model} version 1 \({manifest}\)", text), text[-8000:]
    assert [info.name for info in store.list_blobs("checkpoints", checkpoint)] == [checkpoint]  # nothing deleted
    assert [info.name for info in store.list_blobs("model-registry", manifest)] == [manifest]

    checkpoints_only = {"checkpoints": {"max_age_days": 0}}
    result = dags_test(airflow_ready, "retention", {"policy": checkpoints_only})  # dry_run: its default
    text = output(result)
    assert result.returncode == 0, text[-8000:]
    assert f"would delete: checkpoints/{checkpoint}" in text
    assert [info.name for info in store.list_blobs("checkpoints", checkpoint)] == [checkpoint]

    result = dags_test(airflow_ready, "retention", {"dry_run": False, "policy": checkpoints_only})
    text = output(result)
    assert result.returncode == 0, text[-8000:]
    assert f"deleted: checkpoints/{checkpoint}" in text
    assert not list(store.list_blobs("checkpoints", checkpoint))
    log_name = re.search(r"recorded in audit log (\S+)", text).group(1)
    [event] = [e for e in audit_events(local_stack, log_name) if e["kind"] == "retention"]
    assert event["details"]["dry_run"] is False
    assert {"container": "checkpoints", "blob": checkpoint} in [
        {"container": item["container"], "blob": item["blob"]} for item in event["details"]["deleted"]]  # fmt: skip


def test_access_review_reports_identities_roles_and_what_each_did(airflow_ready, local_stack, store) -> None:
    result = dags_test(airflow_ready, "access_review")
    text = output(result)
    assert result.returncode == 0, text[-8000:]
    blob = re.search(r"access review written to reports/(\S+\.json)", text).group(1)
    report = json.loads(b"".join(store.download_chunks("reports", blob)))
    by_name = {"/".join(entry["names"]): entry for entry in report["identities"]}
    assert by_name["pipeline"]["roles"] == ["Key Vault Reader"] and by_name["pipeline"]["requests"] > 0
    assert by_name["cvm"]["roles"] == ["Key Vault Crypto Service Release User"]
    assert by_name["key-rotator"]["roles"] == ["securetrain KEK Rotator"]
    assert by_name["data-owner"]["roles"] == ["securetrain KEK Owner"]
    assert report["audit_logs"], "the audit logs of earlier runs are reviewed"
    markdown = b"".join(store.download_chunks("reports", blob.removesuffix(".json") + ".md")).decode()
    assert markdown.startswith("# Access review") and "| pipeline |" in markdown
