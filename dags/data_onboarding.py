"""data_onboarding: a data owner validates a dataset, seals it for their KEK and publishes a new version.

Runs in the data owner's zone (the only place besides the TEE that may hold plaintext): the label and feature
columns are kept, the owner's Great Expectations suite runs on them, the table is sealed with the KEK's
*public* key, only ciphertext is uploaded with a manifest of the shards signed with the owner's key, and the
dataset's Asset is updated (``secure_retraining`` trains when breast-cancer's is). Every owner runs it on
their own deployment or ``data-owner`` worker, naming their dataset, their KEK and the connection holding
their signing key; ``securetrain dataset publish`` does the same without Airflow.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, task
from securetrain.airflow.assets import SEALED_DATASET_ALIAS, sealed_dataset_asset
from securetrain.airflow.onboarding import DATA_OWNER_CONN_ID, DATA_OWNER_QUEUE
from securetrain.airflow.pipeline import DEFAULT_SUITE, securetrain_dag
from securetrain.core.keyvault import KEK_NAME

with securetrain_dag(
    "data_onboarding",
    description="Data owner: validate, seal for the KEK, upload, publish a sealed dataset version",
    schedule=None,
    queue=DATA_OWNER_QUEUE,
    # null, not "", for the optional fields: the trigger form sends an emptied text field as null.
    params={
        "dataset_id": Param("breast-cancer", type="string", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", title="Dataset",
                            description="The id the dataset is published under"),
        "source": Param("breast-cancer", type="string", title="Source",
                        description="A bundled dataset (breast-cancer, digits), or the path of a CSV or Parquet "
                        "file on the data owner's worker"),
        "label": Param("label", type="string", title="Label column"),
        "features": Param(None, type=["null", "array"], items={"type": "string"}, minItems=1, uniqueItems=True,
                          title="Feature columns", description="Empty: every column but the label"),
        "version": Param(None, type=["null", "string"], pattern=r"^(?!\.{1,2}$)(?!latest$)[A-Za-z0-9._-]{1,64}$",
                         title="Version", description="Empty: v<run timestamp>. Never 'latest': the training DAGs' name for the newest"),
        "expectation_suite": Param(DEFAULT_SUITE, type="object", title="Expectation suite",
                                   description="Great Expectations suite the data must pass before it is sealed"),
        "shard_rows": Param(None, type=["null", "integer"], minimum=1, title="Rows per shard",
                            description="Empty: one shard"),
        "kek_name": Param(KEK_NAME, type="string", pattern=r"^[0-9A-Za-z-]{1,127}$", title="KEK name",
                          description="The data owner's KEK in the Key Vault of the securetrain_keyvault connection"),
        "data_owner_conn_id": Param(DATA_OWNER_CONN_ID, type="string", title="Data owner connection",
                                    description="The connection whose extra signing_key is the owner's key file"),
    },  # fmt: skip
    tags=["data-owner"],
    doc_md=__doc__,
):

    @task(outlets=[SEALED_DATASET_ALIAS])
    def publish(params: dict[str, Any], outlet_events: Any, ts_nodash: str) -> dict[str, Any]:
        from securetrain.airflow.failures import fail_closed  # noqa: PLC0415 - keeps DAG parsing light
        from securetrain.airflow.onboarding import publish_sealed_dataset  # noqa: PLC0415

        with fail_closed("data_onboarding"):
            published = publish_sealed_dataset(
                params["source"], dataset_id=params["dataset_id"], version=params["version"] or f"v{ts_nodash}",
                label=params["label"], features=params["features"], suite=params["expectation_suite"],
                kek_name=params["kek_name"], shard_rows=params["shard_rows"],
                data_owner_conn_id=params["data_owner_conn_id"],
            )  # fmt: skip
        print(f"published {published['manifest_blob']} (sha256 {published['manifest_sha256']}); validation: "
              f"{published['validation'].get('statistics')}")  # fmt: skip
        outlet_events[SEALED_DATASET_ALIAS].add(
            sealed_dataset_asset(published["dataset_id"]),
            extra={"version": published["version"], "manifest": published["manifest_blob"],
                   "manifest_sha256": published["manifest_sha256"]},
        )  # fmt: skip
        return published

    publish()
