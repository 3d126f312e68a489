"""What an expectation suite may ask of the TEE: an allow-list of expectation types and of their arguments.

The suite comes from Airflow, which the product treats as hostile, and Great Expectations is a library for
trusted suites (``row_condition`` reaches ``DataFrame.query``, ``$PARAMETER`` values are looked up at run
time, ...), so the suite is data, checked here before Great Expectations sees anything: the envelope
(:class:`ExpectationSuite`, :class:`Expectation`), each type against :data:`RULES` and its ``kwargs`` against
the rule's checks, each (type, columns) pair at most once. :func:`check_suite` returns a :class:`CheckedSuite`
built only from the allowed values. The rules and why are in docs/trainer.md ("The suite is data").
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, PlainValidator, ValidationError, WithJsonSchema, model_serializer, model_validator
from pydantic.functional_serializers import SerializerFunctionWrapHandler

from securetrain.core.contracts.base import (
    Contract, DocumentInvalid, Frozen, Items, Omittable, first_error, matching, refusal, thaw
)

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
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_Printable = matching(r"[^\x00-\x1f\x7f]*", "Printable text, no control characters.")
_Id = Annotated[_Printable, Field(max_length=128)]
_ExpectationType = matching(r"expect_[a-z0-9_]{1,128}", "An expectation type, expect_<name>.")
#: A flat map of short strings, kept with the spec; never passed to Great Expectations.
_Meta = Frozen[
    Annotated[
        dict[matching(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, '_', '.', '-'."), Annotated[str, Field(max_length=1024)]],
        Field(max_length=32),
    ]
]


def _notes(value: Any) -> str | tuple[str, ...] | None:
    """Free text (a string or a list of strings), kept with the spec; never passed to Great Expectations."""
    if value is None or (isinstance(value, str) and len(value) <= 4096):
        return value
    if isinstance(value, list | tuple) and len(value) <= 32:
        for index, item in enumerate(value):
            if not isinstance(item, str) or len(item) > 1024:
                raise refusal("a note is a string of at most 1024 characters", index)
        return tuple(value)
    raise refusal("must be a string of at most 4096 characters, a list of at most 32 strings, or null")


_Notes = Annotated[
    str | tuple[str, ...] | None,
    PlainValidator(_notes),
    PlainSerializer(thaw),
    WithJsonSchema({"type": ["string", "array", "null"], "maxLength": 4096, "maxItems": 32,
                    "items": {"type": "string", "maxLength": 1024}}),
]  # fmt: skip


class SuiteRefused(DocumentInvalid):
    """The suite asks for something the TEE does not run; ``field`` is the dotted path of what."""

    document = "job spec"


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


#: Where a value lies below the expectation, e.g. ("kwargs", "value_set", 3).
Path = tuple[str | int, ...]
Check = Callable[[Any, Path], Any]


def _column(value: Any, at: Path) -> str:
    if not isinstance(value, str) or not COLUMN_NAME.fullmatch(value):
        reason = f"{value!r} is not a column name (an identifier of letters, digits, '_', '.', '-', not starting with '__')"
        raise refusal(reason, *at)
    return value


def _number(value: Any, at: Path) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise refusal(f"{value!r} is not a finite number", *at)
    return value


def _count(value: Any, at: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise refusal(f"{value!r} is not a whole number from 0 to 2**53", *at)
    return value


def _fraction(value: Any, at: Path) -> int | float:
    number = _number(value, at)
    if not 0 <= number <= 1:
        raise refusal(f"{value!r} is not a fraction from 0 to 1", *at)
    return number


def _flag(value: Any, at: Path) -> bool:
    if not isinstance(value, bool):
        raise refusal(f"{value!r} is not true or false", *at)
    return value


def _scalar(value: Any, at: Path) -> str | int | float | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT or _CONTROL.search(value):
            raise refusal(f"a string in a value set has at most {MAX_TEXT} printable characters", *at)
        return value
    return _number(value, at)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _value_set(value: Any, at: Path) -> list[str | int | float | bool]:
    if not _is_list(value) or not 1 <= len(value) <= MAX_VALUE_SET:
        raise refusal(f"must be a list of 1 to {MAX_VALUE_SET} numbers, strings or booleans", *at)
    return [_scalar(item, (*at, index)) for index, item in enumerate(value)]


def _column_list(value: Any, at: Path) -> list[str]:
    if not _is_list(value) or not 2 <= len(value) <= MAX_COLUMN_LIST:
        raise refusal(f"must be a list of 2 to {MAX_COLUMN_LIST} column names", *at)
    columns = [_column(item, (*at, index)) for index, item in enumerate(value)]
    if len(set(columns)) != len(columns):
        raise refusal("names a column twice", *at)
    return columns


def _choice(*options: str) -> Check:
    def check(value: Any, at: Path) -> str:
        if value not in options:
            raise refusal(f"{value!r} is not one of {', '.join(options)}", *at)
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


def _check_kwargs(rule: Rule, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    for name in kwargs:
        if name not in rule.kwargs:
            allowed = ", ".join(rule.kwargs) or "none"
            raise refusal(f"argument not allowed (this expectation takes: {allowed})", "kwargs", name)
    for name in rule.required:
        if name not in kwargs:
            raise refusal("required argument is missing", "kwargs", name)
    checked = {name: rule.kwargs[name](value, ("kwargs", name)) for name, value in kwargs.items()}
    if rule.bounds:
        low, high = checked.get("min_value"), checked.get("max_value")
        if low is None and high is None:
            raise refusal("give min_value, max_value or both", "kwargs", "min_value")
        if low is not None and high is not None and low > high:
            raise refusal(f"{high!r} is below min_value {low!r}", "kwargs", "max_value")
    return checked


class _AsSent(Contract):
    """Dumps only the fields the sender set: a suite reads back exactly as it was sent (the job record keeps it)."""

    @model_serializer(mode="wrap")
    def _as_sent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {name: value for name, value in handler(self).items() if name in self.model_fields_set}


class Expectation(_AsSent):
    """One expectation as Great Expectations writes it (``ExpectationConfiguration.to_json_dict()``).

    Only ``type`` and ``kwargs`` reach Great Expectations, and only as :meth:`checked` allows them; the
    other fields are bounded text kept with the spec.
    """

    type: _ExpectationType
    kwargs: Frozen[Annotated[dict[str, Any], Field(max_length=16)]] = Field(default={}, validate_default=True)
    meta: _Meta = Field(default={}, validate_default=True)
    id: _Id | None = None
    notes: _Notes = None
    description: Annotated[str, Field(max_length=1024)] | None = None
    severity: Omittable[Literal["critical", "warning", "info"]]

    @model_validator(mode="after")
    def _allowed(self) -> Expectation:
        self.checked()
        return self

    def checked(self) -> CheckedExpectation:
        """The type and the kwargs its rule allows (:data:`RULES`); a refusal names the argument."""
        rule = RULES.get(self.type)
        if rule is None:
            allowed = ", ".join(sorted(RULES))
            raise refusal(f"{self.type!r} is not an expectation the TEE runs (allowed: {allowed})", "type")
        return CheckedExpectation(self.type, _check_kwargs(rule, self.kwargs), rule.release)


class ExpectationSuite(_AsSent):
    """An expectation suite in the form ``ExpectationSuite.to_json_dict()`` writes, within the allow-list."""

    name: Annotated[_Printable, Field(min_length=1, max_length=MAX_TEXT)]
    id: _Id | None = None
    meta: _Meta = Field(default={}, validate_default=True)
    notes: _Notes = None
    expectations: Annotated[Items[Expectation], Field(min_length=1, max_length=MAX_EXPECTATIONS)]

    @model_validator(mode="after")
    def _each_once(self) -> ExpectationSuite:
        self.checked()
        return self

    def checked(self) -> CheckedSuite:
        """What the TEE may hand Great Expectations; each (type, columns) pair at most once."""
        expectations: list[CheckedExpectation] = []
        seen: dict[tuple[str, tuple[str, ...]], int] = {}
        for index, expectation in enumerate(self.expectations):
            checked = expectation.checked()
            key = (checked.type, checked.columns)
            if key in seen:
                reason = f"repeats expectations[{seen[key]}] ({checked.type} on the same columns); each may appear once"
                raise refusal(reason, "expectations", index)
            seen[key] = index
            expectations.append(checked)
        return CheckedSuite(self.name, tuple(expectations))


def check_suite(suite: ExpectationSuite | Mapping[str, Any], *, where: str = "expectation_suite") -> CheckedSuite:
    """``suite`` as a :class:`CheckedSuite`, or :class:`SuiteRefused` naming the field (under ``where``).

    A suite that is already an :class:`ExpectationSuite` is checked again from its document: whatever
    checked it before, the allow-list is applied right here.
    """
    document = suite.model_dump(mode="json") if isinstance(suite, ExpectationSuite) else suite
    try:
        return ExpectationSuite.model_validate(document).checked()
    except ValidationError as exc:
        raise SuiteRefused(*first_error(exc, root=(where,))) from None
