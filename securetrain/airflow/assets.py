"""The Airflow Assets securetrain publishes: one per sealed dataset, updated when a version lands.

``data_onboarding`` publishes whichever dataset its run names, so its task declares :data:`SEALED_DATASET_ALIAS`
and, once the version is published, attaches the event to that dataset's asset through the alias: a DAG
scheduled on one dataset's asset (``secure_retraining`` on breast-cancer's) runs only for that dataset.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

#: What ``data_onboarding`` declares as its outlet; each run resolves it to the asset of the dataset it published.
SEALED_DATASET_ALIAS = AssetAlias(name="sealed-dataset-published", group="sealed-dataset")


def sealed_dataset_asset(dataset_id: str) -> Asset:
    return Asset(name=f"sealed-dataset-{dataset_id}", uri=f"securetrain://datasets/{dataset_id}", group="sealed-dataset")
