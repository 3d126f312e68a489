"""What an expectation suite may ask of the TEE: an allow-list of expectation types and of their arguments.

The suite comes from the job spec, that is from Airflow, which the product treats as hostile. Great
Expectations is a library for trusted suites: an expectation's ``row_condition`` with
``condition_parser: "pandas"`` reaches ``DataFrame.query`` (whose ``@name`` lookups run arbitrary Python),
``$PARAMETER`` dictionaries are looked up at run time, ``expect_column_values_to_be_of_type`` resolves
type names, and a row condition narrows an expectation to one row, so that its ``observed_value`` is a
cell. So the suite is data, checked here before Great Expectations sees anything:

- the suite's envelope (:data:`SUITE_SCHEMA`): name, bounded ``id``/``meta``/``notes``/``description``
  (never passed to Great Expectations), at most :data:`MAX_EXPECTATIONS` expectations;
- each expectation's ``type`` is one of :data:`RULES`, and its ``kwargs`` are exactly the arguments that
  type's rule lists, each of the kind the rule says (a column name that is an identifier, a finite
  number, ``mostly`` in [0, 1], a bounded set of scalars, ...). Nothing else: no ``row_condition``,
  ``condition_parser``, ``result_format``, ``catch_exceptions``, ``include_config``, ``meta``, no
  dictionaries (``{"$PARAMETER": ...}``), nothing that names a Python object;
- each (type, columns) pair at most once: two range checks of one column that differ by a hair would
  give two counts whose difference is one row.

:func:`check_suite` returns a :class:`CheckedSuite` built only from the allowed values; the TEE hands
Great Expectations nothing else (``securetrain/core/validation.py`` runs the check again right before
Great Expectations, whatever checked the job spec before). Each rule also says what of its result may
leave the TEE (:class:`Release`); ``validation.py`` applies it with :data:`MIN_GROUP_SIZE`.

The job spec check (``securetrain/core/job_spec.py``) calls :func:`check_suite` too, so a refused suite is a
``400`` on ``POST /v1/jobs`` naming the field (``expectation_suite.expectations[0].kwargs.row_condition``).
The limits and why are in docs/trainer.md ("Validation aggregates").
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from securetrain.core.errors import ConfigurationError
from securetrain.core.json_input import field_path, strict_validator

#: Expectations per suite. Every expectation's success is one bit about the data that leaves the TEE, and a
#: suite of narrow ranges is a binary search; the bound caps what one job can learn that way (docs/trainer.md).
MAX_EXPECTATIONS = 32
#: A count of rows (or its complement) between 1 and MIN_GROUP_SIZE - 1 is withheld: it describes a group so
#: small that the expectation's range or set pins the group's values (docs/trainer.md).
MIN_GROUP_SIZE = 11
MAX_VALUE_SET = 256
MAX_TEXT = 256
MAX_COLUMN_LIST = 32
_MAX_COUNT = 2**53

# A column named by the suite: an identifier, never a dunder name.
COLUMN_NAME = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_.-]{0,127}")
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ID = {"type": ["string", "null"], "maxLength": 128, "pattern": _PRINTABLE}
_META = {
    "type": "object",
    "maxProperties": 32,
    "propertyNames": {"pattern": r"^[A-Za-z0-9_.-]{1,64}$"},
    "additionalProperties": {"type": "string", "maxLength": 1024},
    "description": "A flat map of short strings, kept with the spec; never passed to Great Expectations.",
}
_NOTES = {
    "type": ["string", "array", "null"],
    "maxLength": 4096,
    "maxItems": 32,
    "items": {"type": "string", "maxLength": 1024},
    "description": "Free text (a string or a list of strings), kept with the spec; never passed to Great Expectations.",
}

SUITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "expectations"],
    "description": (
        "A Great Expectations suite (ExpectationSuite.to_json_dict() form) run inside the TEE on the decrypted "
        "data before training. Expectation types and their kwargs come from an allow-list "
        "(securetrain/core/suite_policy.py); only whole-column aggregates of the results leave the TEE."
    ),
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": _PRINTABLE},
        "id": _ID,
        "meta": _META,
        "notes": _NOTES,
        "expectations": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_EXPECTATIONS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type"],
                "properties": {
                    "type": {"type": "string", "pattern": r"^expect_[a-z0-9_]{1,128}$"},
                    "kwargs": {"type": "object", "maxProperties": 16},
                    "meta": _META,
                    "id": _ID,
                    "notes": _NOTES,
                    "description": {"type": ["string", "null"], "maxLength": 1024},
                    "severity": {"enum": ["critical", "warning", "info"]},
                },
            },
        },
    },
}
_SUITE_VALIDATOR = strict_validator(SUITE_SCHEMA)


class SuiteRefused(ConfigurationError):
    """The suite asks for something the TEE does not run; ``field`` is the dotted path of what."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"job spec field {field!r}: {reason}")
        self.field = field
        self.reason = reason


class Release(enum.Enum):
    """What of an expectation's result may leave the TEE besides ``success``."""

    #: Row counts of a per-row condition (unexpected, missing, and their percentages), each only when
    #: neither it nor its complement lies between 1 and MIN_GROUP_SIZE - 1.
    COUNTS = "counts"
    #: ``observed_value``: a count over the whole table (rows, columns).
    TABLE = "table"
    #: ``observed_value``: an aggregate over a whole column (mean, standard deviation, sum, distinct-value
    #: count or share), only when the column has at least MIN_GROUP_SIZE values.
    COLUMN_AGGREGATE = "column aggregate"
    #: ``observed_value``: the share of non-null values, only when the null count passes the COUNTS rule.
    NULL_SHARE = "null share"
    #: Nothing but ``success``: the observation is one row's value (min, max, median, most common value)
    #: or a set of values.
    SUCCESS = "success"


Check = Callable[[Any, str], Any]


def _column(value: Any, where: str) -> str:
    if not isinstance(value, str) or not COLUMN_NAME.fullmatch(value):
        reason = f"{value!r} is not a column name (an identifier of letters, digits, '_', '.', '-', not starting with '__')"
        raise SuiteRefused(where, reason)
    return value


def _number(value: Any, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SuiteRefused(where, f"{value!r} is not a finite number")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise SuiteRefused(where, f"{value!r} is not a whole number from 0 to 2**53")
    return value


def _fraction(value: Any, where: str) -> int | float:
    number = _number(value, where)
    if not 0 <= number <= 1:
        raise SuiteRefused(where, f"{value!r} is not a fraction from 0 to 1")
    return number


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SuiteRefused(where, f"{value!r} is not true or false")
    return value


def _scalar(value: Any, where: str) -> str | int | float | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT or _CONTROL.search(value):
            raise SuiteRefused(where, f"a string in a value set has at most {MAX_TEXT} printable characters")
        return value
    return _number(value, where)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _value_set(value: Any, where: str) -> list[str | int | float | bool]:
    if not _is_list(value) or not 1 <= len(value) <= MAX_VALUE_SET:
        raise SuiteRefused(where, f"must be a list of 1 to {MAX_VALUE_SET} numbers, strings or booleans")
    return [_scalar(item, f"{where}[{index}]") for index, item in enumerate(value)]


def _column_list(value: Any, where: str) -> list[str]:
    if not _is_list(value) or not 2 <= len(value) <= MAX_COLUMN_LIST:
        raise SuiteRefused(where, f"must be a list of 2 to {MAX_COLUMN_LIST} column names")
    columns = [_column(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if len(set(columns)) != len(columns):
        raise SuiteRefused(where, "names a column twice")
    return columns


def _choice(*options: str) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in options:
            raise SuiteRefused(where, f"{value!r} is not one of {', '.join(options)}")
        return value

    return check


@dataclass(frozen=True)
class Rule:
    """One allowed expectation type: its arguments (name -> check), which are required, what may leave."""

    kwargs: Mapping[str, Check]
    release: Release
    required: tuple[str, ...] = ()
    #: min_value / max_value: at least one is given, and min_value <= max_value.
    bounds: bool = False


_STRICT = {"strict_min": _flag, "strict_max": _flag}
_RANGE = {"min_value": _number, "max_value": _number, **_STRICT}
_COUNT_RANGE = {"min_value": _count, "max_value": _count, **_STRICT}
_SHARE_RANGE = {"min_value": _fraction, "max_value": _fraction, **_STRICT}
_COLUMN = {"column": _column}
_PAIR = {"column_A": _column, "column_B": _column, "mostly": _fraction,
         "ignore_row_if": _choice("both_values_are_missing", "either_value_is_missing", "neither")}  # fmt: skip


def _map(**required: Check) -> Rule:
    """A per-row condition on one column (with ``required`` arguments besides it): counts may leave."""
    return Rule({**_COLUMN, "mostly": _fraction, **required}, Release.COUNTS, ("column", *required))


def _column_statistic(release: Release, checks: Mapping[str, Check] = _RANGE) -> Rule:
    """A statistic of one whole column compared with a range."""
    return Rule({**_COLUMN, **checks}, release, ("column",), bounds=True)


def _column_set(release: Release, **extra: Check) -> Rule:
    return Rule({**_COLUMN, "value_set": _value_set, **extra}, release, ("column", "value_set"))


#: The allow-list: every expectation type the TEE runs, and how.
RULES: Mapping[str, Rule] = {
    # Per-row conditions over a whole column.
    "expect_column_values_to_not_be_null": _map(),
    "expect_column_values_to_be_null": _map(),
    "expect_column_values_to_be_in_set": _map(value_set=_value_set),
    "expect_column_values_to_not_be_in_set": _map(value_set=_value_set),
    "expect_column_values_to_be_between": Rule(
        {**_COLUMN, "mostly": _fraction, **_RANGE}, Release.COUNTS, ("column",), bounds=True
    ),
    "expect_column_values_to_be_unique": _map(),
    "expect_column_pair_values_to_be_equal": Rule(_PAIR, Release.COUNTS, ("column_A", "column_B")),
    "expect_column_pair_values_a_to_be_greater_than_b": Rule(
        {**_PAIR, "or_equal": _flag}, Release.COUNTS, ("column_A", "column_B")
    ),
    "expect_compound_columns_to_be_unique": Rule(
        {"column_list": _column_list, "mostly": _fraction,
         "ignore_row_if": _choice("all_values_are_missing", "any_value_is_missing", "never")},
        Release.COUNTS, ("column_list",),
    ),  # fmt: skip
    # Whole-column aggregates.
    "expect_column_mean_to_be_between": _column_statistic(Release.COLUMN_AGGREGATE),
    "expect_column_stdev_to_be_between": _column_statistic(Release.COLUMN_AGGREGATE),
    "expect_column_sum_to_be_between": _column_statistic(Release.COLUMN_AGGREGATE),
    "expect_column_unique_value_count_to_be_between": _column_statistic(Release.COLUMN_AGGREGATE, _COUNT_RANGE),
    "expect_column_proportion_of_unique_values_to_be_between": _column_statistic(
        Release.COLUMN_AGGREGATE, _SHARE_RANGE
    ),
    "expect_column_proportion_of_non_null_values_to_be_between": _column_statistic(Release.NULL_SHARE, _SHARE_RANGE),
    # Statistics that are one row's value, and sets of values: success only.
    "expect_column_min_to_be_between": _column_statistic(Release.SUCCESS),
    "expect_column_max_to_be_between": _column_statistic(Release.SUCCESS),
    "expect_column_median_to_be_between": _column_statistic(Release.SUCCESS),
    "expect_column_distinct_values_to_be_in_set": _column_set(Release.SUCCESS),
    "expect_column_distinct_values_to_contain_set": _column_set(Release.SUCCESS),
    "expect_column_distinct_values_to_equal_set": _column_set(Release.SUCCESS),
    "expect_column_most_common_value_to_be_in_set": _column_set(Release.SUCCESS, ties_okay=_flag),
    # The table as a whole.
    "expect_table_row_count_to_be_between": Rule(_COUNT_RANGE, Release.TABLE, bounds=True),
    "expect_table_row_count_to_equal": Rule({"value": _count}, Release.TABLE, ("value",)),
    "expect_table_column_count_to_be_between": Rule(
        {"min_value": _count, "max_value": _count}, Release.TABLE, bounds=True
    ),
    "expect_table_column_count_to_equal": Rule({"value": _count}, Release.TABLE, ("value",)),
}


@dataclass(frozen=True)
class CheckedExpectation:
    """An allowed expectation: its type and the allowed kwargs (plain JSON values), nothing else."""

    type: str
    kwargs: Mapping[str, Any]
    release: Release

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns it names, in argument order."""
        named = [self.kwargs[key] for key in ("column", "column_A", "column_B") if key in self.kwargs]
        return (*named, *self.kwargs.get("column_list", ()))


@dataclass(frozen=True)
class CheckedSuite:
    """A suite that passed :func:`check_suite`: what the TEE may hand Great Expectations."""

    name: str
    expectations: tuple[CheckedExpectation, ...]


def _check_kwargs(rule: Rule, kwargs: Any, where: str) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise SuiteRefused(where, "must be an object of the expectation's arguments")
    for name in kwargs:
        if name not in rule.kwargs:
            allowed = ", ".join(rule.kwargs) or "none"
            raise SuiteRefused(f"{where}.{name}", f"argument not allowed (this expectation takes: {allowed})")
    for name in rule.required:
        if name not in kwargs:
            raise SuiteRefused(f"{where}.{name}", "required argument is missing")
    checked = {name: rule.kwargs[name](value, f"{where}.{name}") for name, value in kwargs.items()}
    if rule.bounds:
        low, high = checked.get("min_value"), checked.get("max_value")
        if low is None and high is None:
            raise SuiteRefused(f"{where}.min_value", "give min_value, max_value or both")
        if low is not None and high is not None and low > high:
            raise SuiteRefused(f"{where}.max_value", f"{high!r} is below min_value {low!r}")
    return checked


def check_suite(suite: Any, *, where: str = "expectation_suite") -> CheckedSuite:
    """``suite`` (decoded JSON: dicts and lists) as a :class:`CheckedSuite`, or :class:`SuiteRefused`.

    ``where`` is the suite's place in the document, for the field names of errors.
    """
    errors = sorted(_SUITE_VALIDATOR.iter_errors(suite), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        error = errors[0]
        path = field_path([where, *error.absolute_path])
        if error.validator == "additionalProperties":
            unexpected = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            raise SuiteRefused(f"{path}.{unexpected[0]}", "unknown field; remove it")
        if error.validator == "required":
            missing = next(name for name in error.validator_value if name not in error.instance)
            raise SuiteRefused(f"{path}.{missing}", "required field is missing")
        raise SuiteRefused(path, error.message)
    expectations: list[CheckedExpectation] = []
    seen: dict[tuple[str, tuple[str, ...]], int] = {}
    for index, expectation in enumerate(suite["expectations"]):
        at = f"{where}.expectations[{index}]"
        rule = RULES.get(expectation["type"])
        if rule is None:
            allowed = ", ".join(sorted(RULES))
            raise SuiteRefused(f"{at}.type", f"{expectation['type']!r} is not an expectation the TEE runs (allowed: {allowed})")
        kwargs = _check_kwargs(rule, expectation.get("kwargs", {}), f"{at}.kwargs")
        checked = CheckedExpectation(expectation["type"], kwargs, rule.release)
        key = (checked.type, checked.columns)
        if key in seen:
            reason = f"repeats expectations[{seen[key]}] ({checked.type} on the same columns); each may appear once"
            raise SuiteRefused(at, reason)
        seen[key] = index
        expectations.append(checked)
    return CheckedSuite(suite["name"], tuple(expectations))

