"""The expectation suite inside the TEE: whole-column aggregates only, a failed suite stops, no files written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from securetrain.core.suite_policy import MIN_GROUP_SIZE, SuiteRefused
from securetrain.core.validation import DataValidationFailed, ExpectationSuiteError, validate

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
    assert not aggregates["success"] and failed["element_count"] == 100
    # One row out of range: its count would say that one row lies above 100, so it stays in the TEE.
    assert "unexpected_count" not in failed and "unexpected_count" in failed["withheld"]
    text = json.dumps(aggregates)
    assert "partial_unexpected" not in text and str(SECRET_VALUE) not in text and "987654" not in text


@pytest.mark.parametrize(
    ("max_value", "leaves"),
    [
        (1e6, True),  # no row above: 0 unexpected
        (9.0, True),  # the 10 largest regular values and the secret: 11 rows, a group large enough
        (9.5, False),  # 5 regular values and the secret: a small group
        (-1, True),  # every row: its complement is empty
    ],
)
def test_counts_leave_only_for_groups_of_at_least_the_minimum_size(frame, max_value: float, leaves: bool) -> None:
    expectation = {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "max_value": max_value}}
    try:
        aggregates = validate(suite(expectation), frame)
    except DataValidationFailed as failed:
        aggregates = failed.aggregates
    entry = aggregates["expectations"][0]
    if leaves:
        assert entry["unexpected_count"] in (0, 100) or entry["unexpected_count"] >= MIN_GROUP_SIZE
        assert "withheld" not in entry
    else:
        assert "unexpected_count" not in entry and "unexpected_percent" not in entry
        assert set(entry["withheld"]) >= {"unexpected_count", "unexpected_percent"}


def test_a_per_row_statistic_never_leaves_only_its_success(frame) -> None:
    """The single-row probe: the column's maximum is the secret cell; only whether it lies in range leaves."""
    aggregates = validate(
        suite({"type": "expect_column_max_to_be_between", "kwargs": {"column": "x", "min_value": 0}},
              {"type": "expect_column_median_to_be_between", "kwargs": {"column": "x", "min_value": 0}},
              {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 0}}),
        frame,
    )  # fmt: skip
    largest, median, mean = aggregates["expectations"]
    assert largest == {"expectation": "expect_column_max_to_be_between", "success": True, "columns": ["x"],
                       "withheld": ["observed_value"]}  # fmt: skip
    assert "observed_value" not in median
    assert mean["observed_value"] == pytest.approx(float(frame["x"].mean()))


def test_a_whole_column_aggregate_of_a_small_table_stays_inside(frame) -> None:
    small = frame.head(MIN_GROUP_SIZE - 1)
    aggregates = validate(suite({"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 0}}), small)
    assert "observed_value" not in aggregates["expectations"][0]


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
    with pytest.raises(SuiteRefused, match=r"expectations\[0\]\.type.*'expect_the_moon' is not an expectation the TEE runs"):
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
