"""data_onboarding: the data owner validates a dataset, seals it for the KEK and publishes a new version.

Runs in the data owner's zone (the only place besides the TEE that may hold plaintext): Great
Expectations on the plaintext, sealing with the KEK's *public* key, upload of ciphertext only, a
manifest of the shards, and an update of the dataset's Asset, which starts ``secure_retraining``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, task
from securetrain.airflow.assets import sealed_dataset_asset
from securetrain.airflow.onboarding import DATA_OWNER_QUEUE
from securetrain.airflow.pipeline import DEFAULT_SUITE, securetrain_dag

DATASET = "breast-cancer"

with securetrain_dag(
    "data_onboarding",
    description="Data owner: validate, seal for the KEK, upload, publish a sealed dataset version",
    schedule=None,
    queue=DATA_OWNER_QUEUE,
    params={
        "source": Param(DATASET, type="string", title="Source",
                        description="A bundled dataset (breast-cancer, digits) or the path of a Parquet file"),
        # null, not "": the trigger form sends an emptied text field as null.
        "version": Param(None, type=["null", "string"], pattern=r"^[A-Za-z0-9._-]{1,64}$", title="Version",
                         description="Empty: v<run timestamp>"),
        "expectation_suite": Param(DEFAULT_SUITE, type="object", title="Expectation suite"),
    },  # fmt: skip
    tags=["data-owner"],
    doc_md=__doc__,
):

    @task
    def validate(params: dict[str, Any]) -> dict[str, Any]:
        from securetrain.airflow.onboarding import validate_plaintext  # noqa: PLC0415 - keeps DAG parsing light

        result = validate_plaintext(params["source"], params["expectation_suite"])
        print(f"validation passed: {result['validation']['statistics']}")
        return result

    @task(outlets=[sealed_dataset_asset(DATASET)])
    def seal_and_publish(validated: dict[str, Any], params: dict[str, Any], outlet_events: Any, ts_nodash: str) -> dict[str, Any]:
        from securetrain.airflow.onboarding import publish_sealed_dataset  # noqa: PLC0415

        version = params["version"] or f"v{ts_nodash}"
        manifest = publish_sealed_dataset(DATASET, version, params["source"], validated["plaintext_sha256"])
        outlet_events[sealed_dataset_asset(DATASET)].extra = {"version": version, "manifest": manifest["manifest_blob"]}
        return manifest

    seal_and_publish(validate())
