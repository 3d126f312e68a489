"""The Airflow Assets securetrain publishes: one per sealed dataset, updated when a version lands."""

from __future__ import annotations

from airflow.sdk import Asset


def sealed_dataset_asset(dataset_id: str) -> Asset:
    return Asset(name=f"sealed-dataset-{dataset_id}", uri=f"securetrain://datasets/{dataset_id}", group="sealed-dataset")
