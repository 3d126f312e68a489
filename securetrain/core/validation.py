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
    if (result.exception_info or {}).get("raised_exception") or any(
        isinstance(info, Mapping) and info.get("raised_exception") for info in (result.exception_info or {}).values()
    ):
        entry["raised_exception"] = True
    return entry


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
    expectation_suite = GxExpectationSuite(name=checked.name)
    # Our own ids: Great Expectations orders results its way, and each result must be released under the
    # rule of its own expectation.
    ids = [str(uuid.uuid4()) for _ in checked.expectations]
    for index, expectation in enumerate(checked.expectations):
        # Only the allow-listed type and kwargs, copied: nothing of the spec's own objects reaches GE.
        configuration = {"type": expectation.type, "kwargs": copy.deepcopy(dict(expectation.kwargs)), "id": ids[index]}
        try:
            expectation_suite.add_expectation_configuration(ExpectationConfiguration(**configuration))
        except Exception as exc:  # noqa: BLE001 - GE raises many types for a bad configuration
            raise ExpectationSuiteError(f"expectation_suite.expectations[{index}] ({expectation.type}): {exc}") from None
    batch = (
        context.data_sources.add_pandas("tee")
        .add_dataframe_asset("training_data")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    outcome = batch.validate(expectation_suite, result_format="BASIC")
    by_id = {result.expectation_config.id: result for result in outcome.results}
    if sorted(by_id) != sorted(ids) or len(outcome.results) != len(ids):
        # A result we cannot pair with its expectation must not leave under another's rule.
        raise ExpectationSuiteError("Great Expectations returned results that do not match the suite's expectations")
    results = [by_id[expectation_id] for expectation_id in ids]
    statistics = {key: _number(value) for key, value in (outcome.statistics or {}).items()}
    aggregates = {
        "suite": checked.name,
        "success": bool(outcome.success),
        "statistics": {key: value for key, value in statistics.items() if value is not None},
        "rows": len(frame),
        "expectations": [_aggregate(e, result, frame) for e, result in zip(checked.expectations, results, strict=True)],
    }
    if not outcome.success:
        failed = [entry["expectation"] + (f"({', '.join(entry['columns'])})" if "columns" in entry else "")
                  for entry in aggregates["expectations"] if not entry["success"]]  # fmt: skip
        raise DataValidationFailed(
            f"data validation failed: {len(failed)} of {len(aggregates['expectations'])} expectations of suite "
            f"{checked.name!r} failed on the decrypted data: {', '.join(failed)}; nothing was trained",
            aggregates,
        )
    log.info("expectation suite %r passed (%d expectations, %d rows)", checked.name, len(results), len(frame))
    return aggregates
