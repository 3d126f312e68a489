"""The job's Great Expectations suite, run inside the TEE on the decrypted data; only aggregates leave.

:func:`validate` checks the suite against the allow-list of :mod:`securetrain.core.suite_policy` again, right
here, and hands Great Expectations only the allowed types and kwargs, in an ephemeral context that writes
nothing and sends nothing. What of each result may leave (its rule's
:class:`~securetrain.core.suite_policy.Release`, with :data:`~securetrain.core.suite_policy.MIN_GROUP_SIZE`)
is in docs/trainer.md ("What leaves the TEE").
"""

from __future__ import annotations

import copy
import logging
import math
import os
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from securetrain.core.errors import ConfigurationError
from securetrain.core.contracts.training import DataValidationFailed
from securetrain.core.suite_policy import (
    MIN_GROUP_SIZE,
    CheckedExpectation,
    CheckedSuite,
    ExpectationSuite,
    Release,
    check_suite,
)

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

# The row counts of a per-row condition, grouped by the count whose size decides whether they may leave.
_MISSING_KEYS = ("missing_count", "missing_percent")
_UNEXPECTED_KEYS = (
    "unexpected_count", "unexpected_percent", "unexpected_percent_total", "unexpected_percent_nonmissing"
)  # fmt: skip


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


def _group_may_leave(count: int | float | None, total: int | float | None) -> bool:
    """Whether a count of rows out of ``total`` may leave: neither it nor its complement is a small group."""
    if count is None or total is None:
        return False
    return all(part == 0 or part >= MIN_GROUP_SIZE for part in (count, total - count))


def _check_columns(suite: CheckedSuite, frame: pandas.DataFrame) -> None:
    available = set(frame.columns)
    for index, expectation in enumerate(suite.expectations):
        for name in expectation.columns:
            if name not in available:
                raise ExpectationSuiteError(
                    f"expectation_suite.expectations[{index}] ({expectation.type}) names column {name!r}, which is "
                    f"not among the training columns (the label and the features: {sorted(available)[:20]}"
                    f"{', ...' if len(available) > 20 else ''})"
                )


def _counts(details: Mapping[str, Any]) -> dict[str, Any]:
    """A per-row condition's counts that may leave, and the names of those withheld."""
    element = _number(details.get("element_count"))
    missing = _number(details.get("missing_count")) or 0
    unexpected = _number(details.get("unexpected_count"))
    entry: dict[str, Any] = {} if element is None else {"element_count": element}
    withheld: list[str] = []
    present = None if element is None else element - missing
    missing_leaves = _group_may_leave(missing, element)
    # The unexpected percentages are relative to the non-missing rows, so they would give the missing
    # count away: the unexpected group leaves only together with a missing count that may leave.
    groups = (
        (_MISSING_KEYS, missing_leaves),
        (_UNEXPECTED_KEYS, missing_leaves and _group_may_leave(unexpected, present)),
    )
    for keys, leaves in groups:
        for key in keys:
            number = _number(details.get(key))
            if number is None:
                continue
            if leaves:
                entry[key] = number
            else:
                withheld.append(key)
    if withheld:
        entry["withheld"] = withheld
    return entry


def _observed(expectation: CheckedExpectation, observed: Any, frame: pandas.DataFrame) -> float | int | None:
    """``observed_value`` if the expectation's rule lets it leave, else None."""
    number = _number(observed)
    if number is None:
        return None
    if expectation.release is Release.TABLE:
        return number
    if expectation.release is Release.COLUMN_AGGREGATE:
        values = int(frame[expectation.columns[0]].count())
        return number if values >= MIN_GROUP_SIZE else None
    if expectation.release is Release.NULL_SHARE:
        nulls = int(frame[expectation.columns[0]].isna().sum())
        return number if _group_may_leave(nulls, len(frame)) else None
    return None


def _aggregate(expectation: CheckedExpectation, result: Any, frame: pandas.DataFrame) -> dict[str, Any]:
    """What may leave the TEE of one expectation's result (never row values)."""
    entry: dict[str, Any] = {"expectation": expectation.type, "success": bool(result.success)}
    if expectation.columns:
        entry["columns"] = list(expectation.columns)
    details = result.result or {}
    if expectation.release is Release.COUNTS:
        entry |= _counts(details)
    observed = _observed(expectation, details.get("observed_value"), frame)
    if observed is not None:
        entry["observed_value"] = observed
    elif "observed_value" in details:
        entry["withheld"] = [*entry.get("withheld", []), "observed_value"]
    if _raised(result):
        entry["raised_exception"] = True
    return entry


class _SuiteRun:
    """Great Expectations set up for ``expectations`` once, in an ephemeral context that writes nothing and sends
    nothing; :meth:`results` runs them on one frame."""

    def __init__(self, name: str, expectations: tuple[CheckedExpectation, ...]) -> None:
        # Before the import: Great Expectations reads it when it is first loaded.
        os.environ["GX_ANALYTICS_ENABLED"] = "false"
        import great_expectations as gx  # noqa: PLC0415 - slow to import, only needed when a suite runs
        from great_expectations.core.expectation_suite import ExpectationSuite as GxExpectationSuite  # noqa: PLC0415
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
        self._suite = GxExpectationSuite(name=name)
        # Our own ids: Great Expectations orders results its way, and each result must be released under the
        # rule of its own expectation.
        self._ids = [str(uuid.uuid4()) for _ in expectations]
        for index, expectation in enumerate(expectations):
            # Only the allow-listed type and kwargs, copied: nothing of the spec's own objects reaches GE.
            configuration = {"type": expectation.type, "kwargs": copy.deepcopy(dict(expectation.kwargs)),
                             "id": self._ids[index]}  # fmt: skip
            try:
                self._suite.add_expectation_configuration(ExpectationConfiguration(**configuration))
            except Exception as exc:  # noqa: BLE001 - GE raises many types for a bad configuration
                raise ExpectationSuiteError(f"expectation_suite.expectations[{index}] ({expectation.type}): {exc}") from None
        self._batches = context.data_sources.add_pandas("tee").add_dataframe_asset("training_data")
        self._definition = self._batches.add_batch_definition_whole_dataframe("all_rows")

    def results(self, frame: pandas.DataFrame) -> tuple[Any, list[Any]]:
        """The outcome and the results in the order of the expectations."""
        batch = self._definition.get_batch(batch_parameters={"dataframe": frame})
        outcome = batch.validate(self._suite, result_format="BASIC")
        by_id = {result.expectation_config.id: result for result in outcome.results}
        if sorted(by_id) != sorted(self._ids) or len(outcome.results) != len(self._ids):
            # A result we cannot pair with its expectation must not leave under another's rule.
            raise ExpectationSuiteError("Great Expectations returned results that do not match the suite's expectations")
        return outcome, [by_id[expectation_id] for expectation_id in self._ids]


def _raised(result: Any) -> bool:
    info = result.exception_info or {}
    return bool(info.get("raised_exception")) or any(
        isinstance(entry, Mapping) and entry.get("raised_exception") for entry in info.values()
    )


def _failed(checked: CheckedSuite, aggregates: dict[str, Any]) -> DataValidationFailed:
    failed = [entry["expectation"] + (f"({', '.join(entry['columns'])})" if "columns" in entry else "")
              for entry in aggregates["expectations"] if not entry["success"]]  # fmt: skip
    return DataValidationFailed(
        f"data validation failed: {len(failed)} of {len(aggregates['expectations'])} expectations of suite "
        f"{checked.name!r} failed on the decrypted data: {', '.join(failed)}; nothing was trained",
        aggregates,
    )


def validate(suite: ExpectationSuite | Mapping[str, Any], frame: pandas.DataFrame) -> dict[str, Any]:
    """Run ``suite`` (the job spec's, or a suite document) on ``frame``; return its aggregates, or raise
    :class:`DataValidationFailed` with them.

    Raises:
        SuiteRefused: the suite asks for something outside the allow-list (:mod:`securetrain.core.suite_policy`).
        ExpectationSuiteError: the suite names a column the data lacks, or Great Expectations rejects it.
        DataValidationFailed: at least one expectation failed (or raised).
    """
    checked = check_suite(suite)
    _check_columns(checked, frame)
    outcome, results = _SuiteRun(checked.name, checked.expectations).results(frame)
    statistics = {key: _number(value) for key, value in (outcome.statistics or {}).items()}
    aggregates = {
        "suite": checked.name,
        "success": bool(outcome.success),
        "statistics": {key: value for key, value in statistics.items() if value is not None},
        "rows": len(frame),
        "expectations": [_aggregate(e, result, frame) for e, result in zip(checked.expectations, results, strict=True)],
    }
    if not outcome.success:
        raise _failed(checked, aggregates)
    log.info("expectation suite %r passed (%d expectations, %d rows)", checked.name, len(results), len(frame))
    return aggregates


#: Expectations whose result needs a whole column at once (every value against every other).
_WHOLE_COLUMN_ROWS = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
#: The table-level expectations a streamed dataset answers exactly: the column count is the same in every shard
#: (the trainer checks the layout), the row count is the shards' sum.
_TABLE_COLUMNS = {"expect_table_column_count_to_be_between", "expect_table_column_count_to_equal"}
_TABLE_ROWS = {"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"}
_COUNT_KEYS = ("element_count", "missing_count", "unexpected_count")


def _streamable(expectation: CheckedExpectation) -> str | None:
    """Why ``expectation`` cannot be validated shard by shard with its meaning unchanged; None if it can."""
    if expectation.type in _TABLE_COLUMNS or expectation.type in _TABLE_ROWS:
        return None
    if expectation.release is not Release.COUNTS or expectation.type in _WHOLE_COLUMN_ROWS:
        return "its result is a statistic of the whole column, which no shard holds"
    if expectation.kwargs.get("mostly", 1) != 1:
        return "with 'mostly' below 1 its success depends on the share of failing rows over the whole dataset"
    return None


class StreamedValidation:
    """The suite on a dataset seen one shard at a time, with the meaning of its aggregates unchanged.

    Only expectations that decompose exactly are run: a per-row condition without ``mostly`` holds for the
    dataset exactly when it holds in every shard, and its counts are the shards' sums; the column count is
    the same in every shard; the row count is the shards' sum (Great Expectations checks it on an index of
    that many rows). Whole-column statistics (mean, median, unique values...) and ``mostly`` below 1 are
    refused, before any shard is read. What leaves is released under the same rules as :func:`validate`,
    applied to the whole dataset's counts.
    """

    def __init__(self, suite: ExpectationSuite | Mapping[str, Any]) -> None:
        self._checked = check_suite(suite)
        for index, expectation in enumerate(self._checked.expectations):
            reason = _streamable(expectation)
            if reason is not None:
                raise ExpectationSuiteError(
                    f"expectation_suite.expectations[{index}] ({expectation.type}) cannot be validated on a dataset "
                    f"streamed shard by shard: {reason}; leave it out, or train on a dataset within the TEE's "
                    "in-memory cache"
                )
        expectations = self._checked.expectations
        self._per_shard = tuple(i for i, e in enumerate(expectations) if e.type not in _TABLE_ROWS)
        self._on_rows = tuple(i for i, e in enumerate(expectations) if e.type in _TABLE_ROWS)
        self._shard_run = _SuiteRun(self._checked.name, tuple(expectations[i] for i in self._per_shard))
        self._rows = 0
        self._success = dict.fromkeys(self._per_shard, True)
        self._raised = dict.fromkeys(self._per_shard, False)
        self._counts: dict[int, dict[str, int]] = {i: {} for i in self._per_shard}
        self._observed: dict[int, Any] = {}

    def add(self, frame: pandas.DataFrame) -> None:
        """Validate one shard's rows and add up its results."""
        if self._rows == 0:
            _check_columns(self._checked, frame)
        self._rows += len(frame)
        _, results = self._shard_run.results(frame)
        for index, result in zip(self._per_shard, results, strict=True):
            self._success[index] = self._success[index] and bool(result.success)
            self._raised[index] = self._raised[index] or _raised(result)
            details = result.result or {}
            for key in _COUNT_KEYS:
                number = _number(details.get(key))
                if isinstance(number, int):
                    self._counts[index][key] = self._counts[index].get(key, 0) + number
            if "observed_value" in details:
                self._observed[index] = details["observed_value"]

    def _count_entry(self, index: int) -> dict[str, Any]:
        counts = self._counts[index]
        element, missing, unexpected = (counts.get(key) for key in _COUNT_KEYS)
        details: dict[str, Any] = dict(counts)
        if element:
            if missing is not None:
                details["missing_percent"] = 100 * missing / element
            if unexpected is not None:
                present = element - (missing or 0)
                details["unexpected_percent_total"] = 100 * unexpected / element
                if present:
                    details["unexpected_percent"] = details["unexpected_percent_nonmissing"] = 100 * unexpected / present
        return _counts(details)

    def finish(self) -> dict[str, Any]:
        """The aggregates of the whole dataset, or :class:`DataValidationFailed` with them."""
        import pandas  # noqa: PLC0415 - pandas is only needed when a suite runs

        entries: dict[int, dict[str, Any]] = {}
        for index in self._per_shard:
            expectation = self._checked.expectations[index]
            entry: dict[str, Any] = {"expectation": expectation.type, "success": self._success[index]}
            if expectation.columns:
                entry["columns"] = list(expectation.columns)
            if expectation.release is Release.COUNTS:
                entry |= self._count_entry(index)
            observed = _number(self._observed.get(index))
            if expectation.release is Release.TABLE and observed is not None:
                entry["observed_value"] = observed
            if self._raised[index]:
                entry["raised_exception"] = True
            entries[index] = entry
        if self._on_rows:
            # The row count alone, on an index of that many rows: no row of data, and Great Expectations' own
            # comparison (bounds, strictness).
            rows_only = tuple(self._checked.expectations[i] for i in self._on_rows)
            frame = pandas.DataFrame(index=pandas.RangeIndex(self._rows))
            _, results = _SuiteRun(self._checked.name, rows_only).results(frame)
            for index, expectation, result in zip(self._on_rows, rows_only, results, strict=True):
                entries[index] = _aggregate(expectation, result, frame)
        ordered = [entries[index] for index in range(len(self._checked.expectations))]
        successful = sum(1 for entry in ordered if entry["success"])
        aggregates = {
            "suite": self._checked.name,
            "success": successful == len(ordered),
            "statistics": {
                "evaluated_expectations": len(ordered), "successful_expectations": successful,
                "unsuccessful_expectations": len(ordered) - successful,
                "success_percent": 100 * successful / len(ordered) if ordered else 100.0,
            },  # fmt: skip
            "rows": self._rows,
            "validated": "per shard",
            "expectations": ordered,
        }
        if not aggregates["success"]:
            raise _failed(self._checked, aggregates)
        log.info("expectation suite %r passed shard by shard (%d expectations, %d rows)", self._checked.name,
                 len(ordered), self._rows)  # fmt: skip
        return aggregates
