"""The training DAGs' trigger form: a contract digest or none, the DP terms, and what the tasks receive from them
once Airflow renders their templates as native values."""

from __future__ import annotations

from typing import Any

import pytest

from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError
from securetrain.airflow.pipeline import training_dag, training_params

DIGEST = "0123456789abcdef" * 4


def _form(**values: Any) -> dict[str, Any]:
    """The form's values once Airflow validated them (the defaults, ``values`` entered)."""
    params = ParamsDict(training_params(dataset_version="latest"))
    params.update(values)
    return params.validate()


def test_by_default_a_run_names_no_contract_and_asks_for_no_differential_privacy() -> None:
    values = _form()
    assert values["contract"] is None and values["dp_epsilon"] is None
    assert (values["dp_delta"], values["dp_max_grad_norm"], values["dp_accountant"]) == (1e-5, 1.0, "prv")


def test_the_form_takes_a_contract_digest_and_dp_terms() -> None:
    values = _form(contract=DIGEST, dp_epsilon=1.5, dp_delta=1e-6, dp_max_grad_norm=0.5, dp_accountant="rdp")
    assert values["contract"] == DIGEST and values["dp_epsilon"] == 1.5 and values["dp_accountant"] == "rdp"


@pytest.mark.parametrize(
    "values",
    [{"contract": "breast-cancer-pooled-2026"}, {"contract": DIGEST.upper()}, {"contract": DIGEST[:-1]},
     {"dp_epsilon": 0}, {"dp_epsilon": -1.0}, {"dp_delta": 1.0}, {"dp_max_grad_norm": 0}, {"dp_accountant": "gdp"}],
)  # fmt: skip
def test_the_form_refuses_what_is_no_contract_digest_or_no_dp_term(values: dict[str, Any]) -> None:
    with pytest.raises(ParamValidationError):
        _form(**values)


def test_the_form_says_the_dataset_fields_are_ignored_under_a_contract() -> None:
    params = training_params(dataset_version="latest")
    for name in ("dataset_id", "dataset_version"):
        assert "ignored under a contract" in params[name].description


@pytest.fixture(scope="module")
def dag():
    return training_dag("form_test", description="the form", schedule=None, doc_md=None)


def _rendered(dag, task_id: str, field: str, values: dict[str, Any]) -> Any:
    """What ``task_id`` receives in ``field`` for a run triggered with ``values``, rendered as Airflow renders it."""
    task = dag.get_task(task_id)
    return task.render_template(getattr(task, field), {"params": values}, jinja_env=dag.get_template_env())


def test_the_tasks_receive_the_contract_and_the_privacy_request_as_native_values(dag) -> None:
    plain = _form()
    assert _rendered(dag, "train", "privacy", plain) is None
    for task_id in ("prepare_environment", "attestation_status", "train"):
        assert _rendered(dag, task_id, "contract", plain) is None
    governed = _form(contract=DIGEST, dp_epsilon=1.0)
    assert _rendered(dag, "train", "privacy", governed) == {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0,
                                                            "accountant": "prv"}  # fmt: skip
    for task_id in ("prepare_environment", "attestation_status", "train"):
        assert _rendered(dag, task_id, "contract", governed) == DIGEST
