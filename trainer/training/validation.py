"""The job's Great Expectations suite, run inside the TEE on the decrypted data; only aggregates leave.

The suite comes from the job spec (``ExpectationSuite.to_json_dict()`` form). It runs in an *ephemeral*
Great Expectations context with in-memory stores and no data docs site (no ``gx/`` project directory,
nothing written to the working or temporary directory) against the
in-memory pandas DataFrame of the training columns (:meth:`TrainingData.validation_frame`: the label and
the features, exactly what the model is trained on). Usage analytics are switched off before Great
Expectations is imported, so nothing is sent anywhere.

What leaves the TEE (:func:`validate`'s result, and :class:`DataValidationFailed`'s ``aggregates``) is
built from an allow-list, because Great Expectations' own results carry row values
(``partial_unexpected_list``, ``partial_unexpected_counts``, distinct-value sets as ``observed_value``):

- the suite's statistics (evaluated, successful, unsuccessful expectations, success percent);
- per expectation: its type, the column(s) it names (from the spec, not from the data), success, and the
  counts ``element_count``, ``missing_count``, ``unexpected_count`` and their percentages;
- ``observed_value`` only when it is a single number (a mean, a row count, a min or max, a proportion).

A single number can still be a data value: ``expect_column_max_to_be_between`` observes the largest
value of a column, and a suite written to probe the data (many narrow ranges) learns something from
every count. The suite is part of the job spec Airflow sends, so it is reviewed with the DAG; the
trainer's part is never to return rows. An expectation that raises is reported as
``raised_exception: true`` without its message, which can quote data; a column the suite names that
the data lacks is refused up front with a clear error instead.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from securetrain.errors import ConfigurationError
from trainer.job_spec import DataValidationFailed, _thawed

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

_COUNT_KEYS = (
    "element_count",
    "missing_count",
    "missing_percent",
    "unexpected_count",
    "unexpected_percent",
    "unexpected_percent_total",
    "unexpected_percent_nonmissing",
)
# Expectation arguments that name columns; checked against the data before the suite runs.
_COLUMN_KWARGS = ("column", "column_A", "column_B")
_COLUMN_LIST_KWARGS = ("column_list", "column_set")


class ExpectationSuiteError(ConfigurationError):
    """The job spec's expectation suite cannot run: an unknown expectation, bad arguments, a missing column."""


def _number(value: Any) -> float | int | None:
    """``value`` as a plain int or float if it is a single finite number, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = value.item() if hasattr(value, "item") and getattr(value, "size", 1) == 1 else value
    except (TypeError, ValueError):
        return None
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    if isinstance(number, float) and math.isfinite(number):
        return number
    return None


def _columns_named(kwargs: Mapping[str, Any]) -> list[str]:
    named = [kwargs[key] for key in _COLUMN_KWARGS if isinstance(kwargs.get(key), str)]
    for key in _COLUMN_LIST_KWARGS:
        if isinstance(kwargs.get(key), (list, tuple)):
            named += [name for name in kwargs[key] if isinstance(name, str)]
    return named


def _check_columns(suite: Mapping[str, Any], frame: pandas.DataFrame) -> None:
    available = set(frame.columns)
    for index, expectation in enumerate(suite["expectations"]):
        for name in _columns_named(expectation.get("kwargs", {})):
            if name not in available:
                raise ExpectationSuiteError(
                    f"expectation_suite.expectations[{index}] ({expectation['type']}) names column {name!r}, which is "
                    f"not among the training columns (the label and the features: {sorted(available)[:20]}"
                    f"{', ...' if len(available) > 20 else ''})"
                )


def _aggregate(result: Any) -> dict[str, Any]:
    """The allow-listed aggregates of one expectation's result (never row values)."""
    config = result.expectation_config
    kwargs = config.kwargs
    entry: dict[str, Any] = {"expectation": config.type, "success": bool(result.success)}
    columns = _columns_named(kwargs)
    if columns:
        entry["columns"] = columns
    details = result.result or {}
    for key in _COUNT_KEYS:
        number = _number(details.get(key))
        if number is not None:
            entry[key] = number
    observed = _number(details.get("observed_value"))
    if observed is not None:
        entry["observed_value"] = observed
    if (result.exception_info or {}).get("raised_exception") or any(
        isinstance(info, Mapping) and info.get("raised_exception") for info in (result.exception_info or {}).values()
    ):
        entry["raised_exception"] = True
    return entry


def validate(suite: Mapping[str, Any], frame: pandas.DataFrame) -> dict[str, Any]:
    """Run ``suite`` on ``frame``; return its aggregates, or raise :class:`DataValidationFailed` with them.

    Raises:
        ExpectationSuiteError: the suite names a column the data lacks, or Great Expectations rejects it.
        DataValidationFailed: at least one expectation failed (or raised).
    """
    _check_columns(suite, frame)
    # Before the import: Great Expectations reads it when it is first loaded.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx  # noqa: PLC0415 - slow to import, only needed when a suite runs
    from great_expectations.core.expectation_suite import ExpectationSuite  # noqa: PLC0415
    from great_expectations.data_context.types.base import (  # noqa: PLC0415
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration  # noqa: PLC0415

    config = DataContextConfig(
        # In-memory stores and no data docs site: the default ephemeral context still reserves a
        # temporary directory for one.
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        # tqdm bars on stderr: noise in the agent's log, and they say nothing a reader needs.
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    expectation_suite = ExpectationSuite(name=suite["name"])
    # The spec is frozen (read-only mappings, tuples); Great Expectations wants plain dicts and lists.
    for index, expectation in enumerate(_thawed(suite["expectations"])):
        try:
            expectation_suite.add_expectation_configuration(ExpectationConfiguration(**expectation))
        except Exception as exc:  # noqa: BLE001 - GE raises many types for a bad configuration
            raise ExpectationSuiteError(
                f"expectation_suite.expectations[{index}] ({expectation.get('type')}): {exc}"
            ) from None
    batch = (
        context.data_sources.add_pandas("tee")
        .add_dataframe_asset("training_data")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    outcome = batch.validate(expectation_suite, result_format="BASIC")
    statistics = {key: _number(value) for key, value in (outcome.statistics or {}).items()}
    aggregates = {
        "suite": suite["name"],
        "success": bool(outcome.success),
        "statistics": {key: value for key, value in statistics.items() if value is not None},
        "rows": len(frame),
        "expectations": [_aggregate(result) for result in outcome.results],
    }
    if not outcome.success:
        failed = [entry["expectation"] + (f"({', '.join(entry['columns'])})" if "columns" in entry else "")
                  for entry in aggregates["expectations"] if not entry["success"]]  # fmt: skip
        raise DataValidationFailed(
            f"data validation failed: {len(failed)} of {len(aggregates['expectations'])} expectations of suite "
            f"{suite['name']!r} failed on the decrypted data: {', '.join(failed)}; nothing was trained",
            aggregates,
        )
    log.info("expectation suite %r passed (%d expectations, %d rows)", suite["name"], len(outcome.results), len(frame))
    return aggregates
