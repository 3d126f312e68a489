"""The expectation suite inside the TEE: aggregates only, a failed suite stops, no files written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.training.validation import DataValidationFailed, ExpectationSuiteError, validate

SECRET_VALUE = 987654.25
IN_SET = {"type": "expect_column_distinct_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}}


@pytest.fixture
def frame() -> pd.DataFrame:
    values = np.linspace(0, 10, 100, dtype=np.float32)
    values[7] = SECRET_VALUE
    return pd.DataFrame({"x": values, "label": np.arange(100) % 2})


def suite(*expectations: dict) -> dict:
    return {"name": "training-data", "expectations": list(expectations)}


def test_a_passing_suite_returns_aggregates(frame) -> None:
    aggregates = validate(
        suite(
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}},
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}},
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 10}},
        ),
        frame,
    )
    assert aggregates["success"] and aggregates["rows"] == 100
    assert aggregates["statistics"]["successful_expectations"] == 3
    first = aggregates["expectations"][0]
    assert first == {"expectation": "expect_column_values_to_not_be_null", "success": True, "columns": ["x"],
                     "element_count": 100, "unexpected_count": 0, "unexpected_percent": 0.0}  # fmt: skip
    assert aggregates["expectations"][2]["observed_value"] == 100


def test_a_failing_suite_raises_with_aggregates_and_never_a_row_value(frame) -> None:
    message = r"1 of 2 expectations .* failed.*expect_column_values_to_be_between\(x\)"
    with pytest.raises(DataValidationFailed, match=message) as err:
        validate(
            suite(
                {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "max_value": 100}},
                IN_SET,
            ),
            frame,
        )
    aggregates = err.value.aggregates
    failed = aggregates["expectations"][0]
    assert not aggregates["success"] and failed["unexpected_count"] == 1 and failed["element_count"] == 100
    text = json.dumps(aggregates)
    assert "partial_unexpected" not in text and str(SECRET_VALUE) not in text and "987654" not in text


def test_a_list_valued_observation_is_not_returned(frame) -> None:
    aggregates = validate(
        suite(IN_SET),
        frame,
    )
    assert "observed_value" not in aggregates["expectations"][0]


def test_a_column_the_data_lacks_is_named_before_the_suite_runs(frame) -> None:
    named = r"expectations\[0\] \(expect_column_values_to_not_be_null\) names column 'age'"
    with pytest.raises(ExpectationSuiteError, match=named):
        validate(suite({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "age"}}), frame)


def test_an_unknown_expectation_is_refused(frame) -> None:
    with pytest.raises(ExpectationSuiteError, match=r"expectations\[0\] \(expect_the_moon\)"):
        validate(suite({"type": "expect_the_moon", "kwargs": {}}), frame)


def test_great_expectations_writes_no_files(frame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, temp, home = (tmp_path / name for name in ("work", "temp", "home"))
    for folder in (work, temp, home):
        folder.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    validate(suite({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}), frame)
    assert [p for p in tmp_path.rglob("*") if p not in (work, temp, home)] == []
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
