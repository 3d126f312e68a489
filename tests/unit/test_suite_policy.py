"""The expectation suite allow-list: the repository's suites pass, every unsafe form is refused by field."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from securetrain.core.contracts.job_spec import JobSpec, JobSpecError
from securetrain.core.suite_policy import MAX_EXPECTATIONS, MAX_VALUE_SET, RULES, SuiteRefused, check_suite
from securetrain.core.validation import validate


def suite(*expectations: dict[str, Any]) -> dict[str, Any]:
    return {"name": "training-data", "expectations": list(expectations)}


NOT_NULL = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}}
MAX = {"type": "expect_column_max_to_be_between", "kwargs": {"column": "x", "min_value": 0, "max_value": 100}}

#: One valid expectation of every allowed type, on the columns of :func:`frame`.
ONE_OF_EACH: dict[str, dict[str, Any]] = {
    "expect_column_values_to_not_be_null": {"column": "x", "mostly": 0.9},
    "expect_column_values_to_be_null": {"column": "x", "mostly": 0.0},
    "expect_column_values_to_be_in_set": {"column": "label", "value_set": [0, 1]},
    "expect_column_values_to_not_be_in_set": {"column": "label", "value_set": [7, "seven"]},
    "expect_column_values_to_be_between": {"column": "x", "min_value": -1, "max_value": 1e6, "strict_min": True},
    "expect_column_values_to_be_unique": {"column": "x"},
    "expect_column_pair_values_to_be_equal": {"column_A": "x", "column_B": "label", "ignore_row_if": "neither", "mostly": 0},
    "expect_column_pair_values_a_to_be_greater_than_b": {"column_A": "x", "column_B": "label", "or_equal": True},
    "expect_compound_columns_to_be_unique": {"column_list": ["x", "label"], "ignore_row_if": "never"},
    "expect_column_mean_to_be_between": {"column": "x", "min_value": 0},
    "expect_column_stdev_to_be_between": {"column": "x", "max_value": 1e9},
    "expect_column_sum_to_be_between": {"column": "x", "min_value": 0, "max_value": 1e12},
    "expect_column_unique_value_count_to_be_between": {"column": "label", "min_value": 1, "max_value": 2},
    "expect_column_proportion_of_unique_values_to_be_between": {"column": "label", "max_value": 1},
    "expect_column_proportion_of_non_null_values_to_be_between": {"column": "x", "min_value": 0.5},
    "expect_column_min_to_be_between": {"column": "x", "min_value": -10},
    "expect_column_max_to_be_between": {"column": "x", "max_value": 1e9},
    "expect_column_median_to_be_between": {"column": "x", "min_value": 0, "max_value": 1e9, "strict_max": True},
    "expect_column_distinct_values_to_be_in_set": {"column": "label", "value_set": [0, 1]},
    "expect_column_distinct_values_to_contain_set": {"column": "label", "value_set": [0]},
    "expect_column_distinct_values_to_equal_set": {"column": "label", "value_set": [0, 1]},
    "expect_column_most_common_value_to_be_in_set": {"column": "label", "value_set": [0, 1], "ties_okay": True},
    "expect_table_row_count_to_be_between": {"min_value": 1, "max_value": 1000},
    "expect_table_row_count_to_equal": {"value": 100},
    "expect_table_column_count_to_be_between": {"min_value": 2},
    "expect_table_column_count_to_equal": {"value": 2},
}
SECRET = 987654.25


def frame(rows: int = 100) -> pd.DataFrame:
    values = np.linspace(1000, 1100, rows)
    values[min(7, rows - 1)] = SECRET
    return pd.DataFrame({"x": values, "label": np.arange(rows) % 2})


def refused_field(document: dict[str, Any]) -> str:
    with pytest.raises(SuiteRefused) as caught:
        check_suite(document)
    return caught.value.field


def test_the_table_of_examples_covers_every_allowed_type() -> None:
    assert set(ONE_OF_EACH) == set(RULES)


def test_every_allowed_type_runs_on_great_expectations_and_passes() -> None:
    """The allow-list's kwargs are ones Great Expectations accepts: each type runs and passes on real data."""
    checked = [{"type": name, "kwargs": kwargs} for name, kwargs in ONE_OF_EACH.items()]
    # Split in two suites: one expectation of each type, at most MAX_EXPECTATIONS per suite.
    for part in (checked[: MAX_EXPECTATIONS // 2], checked[MAX_EXPECTATIONS // 2 :]):
        aggregates = validate(suite(*part), frame())
        assert aggregates["success"], aggregates


def test_the_repositorys_suites_pass() -> None:
    from securetrain.airflow.pipeline import DEFAULT_SUITE  # noqa: PLC0415 - imports Airflow

    assert [e.type for e in check_suite(DEFAULT_SUITE).expectations] == [e["type"] for e in DEFAULT_SUITE["expectations"]]
    # The form Great Expectations writes (ExpectationSuite.to_json_dict()): ids, meta, notes, severity.
    written = {"name": "bc", "id": None, "meta": {"great_expectations_version": "1.24.1"}, "notes": None,
               "expectations": [{**NOT_NULL, "meta": {}, "severity": "critical", "id": "5b0cde1e-59a4-4b10-a0a7-3e3f0c1c4d1f"}]}  # fmt: skip
    assert check_suite(written).name == "bc"


def test_great_expectations_receives_only_the_allowed_type_and_kwargs() -> None:
    checked = check_suite({**suite({**MAX, "meta": {"owner": "x"}, "notes": "n", "description": "d"}), "meta": {"k": "v"}})
    (expectation,) = checked.expectations
    assert expectation.type == MAX["type"] and dict(expectation.kwargs) == MAX["kwargs"]


def with_kwargs(expectation: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**expectation, "kwargs": {**expectation["kwargs"], **changes}}


KW = "expectation_suite.expectations[0].kwargs"


@pytest.mark.parametrize(
    ("expectation", "field"),
    [
        # What Great Expectations would evaluate or resolve.
        (with_kwargs(MAX, row_condition='index < @pickle.sys.modules["builtins"].eval("1")'), f"{KW}.row_condition"),
        (with_kwargs(NOT_NULL, condition_parser="pandas"), f"{KW}.condition_parser"),
        (with_kwargs(MAX, row_condition="index == 3", condition_parser="pandas"), f"{KW}.row_condition"),
        (with_kwargs(NOT_NULL, result_format={"result_format": "COMPLETE"}), f"{KW}.result_format"),
        (with_kwargs(NOT_NULL, catch_exceptions=False), f"{KW}.catch_exceptions"),
        (with_kwargs(NOT_NULL, include_config=True), f"{KW}.include_config"),
        (with_kwargs(NOT_NULL, meta={"a": "b"}), f"{KW}.meta"),
        (with_kwargs(NOT_NULL, windows=[]), f"{KW}.windows"),
        (with_kwargs(MAX, min_value={"$PARAMETER": "lower"}), f"{KW}.min_value"),
        ({"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "x", "type_": "__builtins__"}},
         "expectation_suite.expectations[0].type"),
        ({"type": "expect_column_values_to_match_regex", "kwargs": {"column": "x", "regex": "(a+)+$"}},
         "expectation_suite.expectations[0].type"),
        ({"type": "expect_column_values_to_be_custom", "kwargs": {}}, "expectation_suite.expectations[0].type"),
        ({"type": "ExpectColumnValuesToNotBeNull", "kwargs": {"column": "x"}}, "expectation_suite.expectations[0].type"),
        ({**NOT_NULL, "class_name": "os.system"}, "expectation_suite.expectations[0].class_name"),
        ({**NOT_NULL, "module_name": "builtins"}, "expectation_suite.expectations[0].module_name"),
        ({"expectation_type": NOT_NULL["type"], "kwargs": NOT_NULL["kwargs"]}, "expectation_suite.expectations[0].expectation_type"),
        # Columns are identifiers, never dunder names or expressions.
        (with_kwargs(NOT_NULL, column="__class__"), f"{KW}.column"),
        (with_kwargs(NOT_NULL, column="x + 1"), f"{KW}.column"),
        (with_kwargs(NOT_NULL, column="@x"), f"{KW}.column"),
        (with_kwargs(NOT_NULL, column=["x"]), f"{KW}.column"),
        ({"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["x", "__dict__"]}}, f"{KW}.column_list[1]"),
        ({"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["x", "x"]}}, f"{KW}.column_list"),
        # Numbers are finite and where they belong.
        (with_kwargs(NOT_NULL, mostly=1.5), f"{KW}.mostly"),
        (with_kwargs(NOT_NULL, mostly=math.nan), f"{KW}.mostly"),
        (with_kwargs(NOT_NULL, mostly=True), f"{KW}.mostly"),
        (with_kwargs(MAX, max_value=math.inf), f"{KW}.max_value"),
        (with_kwargs(MAX, max_value="100"), f"{KW}.max_value"),
        (with_kwargs(MAX, min_value=True), f"{KW}.min_value"),
        (with_kwargs(MAX, min_value=5, max_value=1), f"{KW}.max_value"),
        ({"type": MAX["type"], "kwargs": {"column": "x"}}, f"{KW}.min_value"),
        ({"type": MAX["type"], "kwargs": {"column": "x", "min_value": None}}, f"{KW}.min_value"),
        ({"type": "expect_table_row_count_to_equal", "kwargs": {"value": 10.0}}, f"{KW}.value"),
        ({"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": -1}}, f"{KW}.min_value"),
        (with_kwargs(MAX, strict_min="yes"), f"{KW}.strict_min"),
        # Value sets: bounded lists of scalars.
        ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x"}}, f"{KW}.value_set"),
        ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": [{"a": 1}]}}, f"{KW}.value_set[0]"),
        ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": "01"}}, f"{KW}.value_set"),
        ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": []}}, f"{KW}.value_set"),
        ({"type": "expect_column_values_to_be_in_set",
          "kwargs": {"column": "x", "value_set": list(range(MAX_VALUE_SET + 1))}}, f"{KW}.value_set"),
        ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": ["a\x00"]}}, f"{KW}.value_set[0]"),
        ({"type": "expect_column_pair_values_to_be_equal",
          "kwargs": {"column_A": "x", "column_B": "label", "ignore_row_if": "__import__('os')"}}, f"{KW}.ignore_row_if"),
        # The free-form fields: bounded, flat, never nested.
        ({**NOT_NULL, "meta": {"nested": {"a": 1}}}, "expectation_suite.expectations[0].meta.nested"),
        ({**NOT_NULL, "notes": "n" * 5000}, "expectation_suite.expectations[0].notes"),
        ({**NOT_NULL, "description": ["a"]}, "expectation_suite.expectations[0].description"),
        ({**NOT_NULL, "id": "x" * 200}, "expectation_suite.expectations[0].id"),
        ({**NOT_NULL, "kwargs": ["column", "x"]}, "expectation_suite.expectations[0].kwargs"),
    ],
)
def test_unsafe_forms_are_refused_by_field(expectation: dict[str, Any], field: str) -> None:
    assert refused_field(suite(expectation)) == field


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({**suite(NOT_NULL), "meta": {"class_name": {"module_name": "os"}}}, "expectation_suite.meta.class_name"),
        ({**suite(NOT_NULL), "notes": [["nested"]]}, "expectation_suite.notes[0]"),
        ({**suite(NOT_NULL), "data_asset_type": "os.system"}, "expectation_suite.data_asset_type"),
        ({**suite(NOT_NULL), "name": "a\nb"}, "expectation_suite.name"),
        (suite(*[NOT_NULL] * 2), "expectation_suite.expectations[1]"),
        (suite(*[with_kwargs(MAX, min_value=i) for i in range(2)]), "expectation_suite.expectations[1]"),
        (suite(*[{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": f"c{i}"}}
                 for i in range(MAX_EXPECTATIONS + 1)]), "expectation_suite.expectations"),
        ({"name": "s", "expectations": []}, "expectation_suite.expectations"),
    ],
)
def test_unsafe_suites_are_refused_by_field(document: dict[str, Any], field: str) -> None:
    assert refused_field(document) == field


def test_the_tee_checks_again_before_great_expectations_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() refuses a hostile suite even when nothing checked it before (defence in depth)."""
    calls: list[str] = []
    monkeypatch.setattr(pd.DataFrame, "query", lambda *a, **k: calls.append("query"))
    monkeypatch.setattr(pd.DataFrame, "eval", lambda *a, **k: calls.append("eval"))
    with pytest.raises(SuiteRefused, match=r"expectations\[0\]\.kwargs\.row_condition"):
        validate(suite(with_kwargs(MAX, row_condition="index == 3", condition_parser="pandas")), frame())
    assert calls == []


def job_spec(**changes: Any) -> dict[str, Any]:
    document = {
        "run_id": "manual__1", "nonce": "n0nce-0f-at-least-22-chars",
        "kek_id": "https://127.0.0.1:8443/keys/kek/0123456789abcdef",
        "datasets": [{"container": "datasets", "manifest": "bc/v1/manifest.json"}],
        "columns": {"label": "label"}, "model": {"name": "mlp", "params": {"hidden": [32, 16], "dropout": 0.1}},
        "hyperparameters": {"epochs": 3, "batch_size": 64, "learning_rate": 0.001, "seed": 7},
        "expectation_suite": suite(NOT_NULL),
        "checkpoints": {"container": "checkpoints", "prefix": "run-1/"},
        "output": {"container": "models", "blob": "run-1/model.sealed"},
    }  # fmt: skip
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = document
        for part in parents:
            target = target[part]
        target[last] = value
    return document


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"expectation_suite": suite(with_kwargs(MAX, row_condition="index == 3"))},
         "expectation_suite.expectations[0].kwargs.row_condition"),
        ({"hyperparameters__epochs": 1.0}, "hyperparameters.epochs"),
        ({"hyperparameters__seed": True}, "hyperparameters.seed"),
        ({"hyperparameters__learning_rate": math.nan}, "hyperparameters.learning_rate"),
        ({"hyperparameters__learning_rate": math.inf}, "hyperparameters.learning_rate"),
        ({"model__params": {"hidden": {"__class__": 1}}}, "model.params.hidden"),
        ({"model__params": {"hidden": [[1]]}}, "model.params.hidden[0]"),
        ({"model__params": {"hidden": list(range(1, 66))}}, "model.params.hidden"),
        ({"model__params": {"act": "x" * 129}}, "model.params.act"),
        ({"model__params": {"dropout": math.nan}}, "model.params.dropout"),
        ({"model__params": {"dropout": None}}, "model.params.dropout"),
    ],
)
def test_the_job_spec_check_refuses_them_by_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        JobSpec.from_json(job_spec(**changes))
    assert caught.value.field == field


def test_the_job_spec_keeps_the_suite_as_sent() -> None:
    document = job_spec(expectation_suite={**suite({**NOT_NULL, "meta": {"owner": "data-team"}}), "notes": ["n"]})
    assert JobSpec.from_json(copy.deepcopy(document)).to_json()["expectation_suite"] == document["expectation_suite"]
