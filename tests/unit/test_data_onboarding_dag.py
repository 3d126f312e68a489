"""The ``data_onboarding`` DAG as Airflow parses it: its trigger form (every owner names their dataset, columns,
suite, KEK and signing-key connection; the defaults publish the bundled breast-cancer data as before), its task on
the data owner's queue, and its outlet: an asset alias that each run resolves to the asset of the dataset it
published, breast-cancer's being the one ``secure_retraining`` is scheduled on."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

from benchmarks.dag_parsing import REPO
from securetrain.airflow.assets import SEALED_DATASET_ALIAS, sealed_dataset_asset
from securetrain.airflow.onboarding import DATA_OWNER_CONN_ID, DATA_OWNER_QUEUE
from securetrain.core.keyvault import KEK_NAME


@pytest.fixture(scope="module")
def dags() -> dict[str, Any]:
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def _trigger_form(dags, values: dict[str, Any]) -> dict[str, Any]:
    """The run's params as Airflow validates a trigger's: the DAG's defaults, overridden by ``values``."""
    params = copy.deepcopy(dags["data_onboarding"].params)
    params.update(values)
    return params.validate()


def test_the_defaults_publish_the_bundled_breast_cancer_data_with_today_s_kek_and_owner(dags) -> None:
    params = dags["data_onboarding"].params.validate()
    assert {name: params[name] for name in ("dataset_id", "source", "label", "features", "version", "shard_rows",
                                            "kek_name", "data_owner_conn_id")} == {  # fmt: skip
        "dataset_id": "breast-cancer", "source": "breast-cancer", "label": "label", "features": None, "version": None,
        "shard_rows": None, "kek_name": KEK_NAME, "data_owner_conn_id": DATA_OWNER_CONN_ID}  # fmt: skip
    assert params["expectation_suite"]["expectations"]


def test_another_owner_names_their_dataset_columns_kek_and_key(dags) -> None:
    values = {"dataset_id": "cohort-2026", "source": "/srv/owner/cohort.csv", "label": "outcome",
              "features": ["age", "bmi"], "version": "2026-06", "shard_rows": 10000, "kek_name": "cohort-kek",
              "data_owner_conn_id": "owner_two"}  # fmt: skip
    params = _trigger_form(dags, values)
    assert {name: params[name] for name in values} == values


@pytest.mark.parametrize(
    "name, value",
    [("dataset_id", "Cohort/2026"), ("features", []), ("features", ["age", "age"]), ("features", "age"),
     ("shard_rows", 0), ("version", "../v1"), ("version", ".."), ("version", "latest"), ("kek_name", "kek/1")],
)  # fmt: skip
def test_the_form_refuses_what_cannot_be_published(dags, name: str, value: Any) -> None:
    with pytest.raises(ParamValidationError):
        _trigger_form(dags, {name: value})


def test_its_task_runs_on_the_data_owner_s_queue_and_publishes_through_the_alias(dags) -> None:
    task = dags["data_onboarding"].get_task("publish")
    assert task.queue == DATA_OWNER_QUEUE
    assert task.outlets == [SEALED_DATASET_ALIAS]


def test_secure_retraining_is_scheduled_on_the_asset_breast_cancer_is_published_to(dags) -> None:
    breast_cancer = sealed_dataset_asset("breast-cancer")
    assets = [asset for _, asset in dags["secure_retraining"].timetable.asset_condition.iter_assets()]
    assert [(asset.name, asset.uri) for asset in assets] == [(breast_cancer.name, breast_cancer.uri)]
