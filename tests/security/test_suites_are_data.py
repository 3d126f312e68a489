"""Hypothesis over expectation suites and job specs: nothing Airflow sends is ever evaluated as code.

Finding 1 of the security review: an expectation's ``row_condition`` reached ``DataFrame.query`` inside
the TEE, whose ``@name`` lookups run arbitrary Python. Here generated suites, valid and hostile (row
conditions, condition parsers, query strings, dunder names, ``$PARAMETER`` lookups, type names,
non-finite numbers), are either refused by the allow-list or run through the TEE's validation on a small
DataFrame, while tripwires watch for anything that evaluates code: the interpreter's audit events
``compile`` and ``exec`` for code that does not come from a file (``eval``, ``exec``, ``compile`` of a
string), ``pickle.find_class`` (unpickling), and spies on ``DataFrame.query``, ``DataFrame.eval`` and
``pandas.eval``. Generated job specs are either refused by field or hold only what their fields declare.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pandas.core.computation.eval as pandas_eval
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from securetrain.core.contracts.job_spec import JobSpec, JobSpecError
from securetrain.core.suite_policy import RULES, CheckedExpectation, CheckedSuite, Release, SuiteRefused, check_suite
from securetrain.core import validation
from securetrain.core.validation import DataValidationFailed, validate

COLUMNS = ("x", "label")
SECRET = 987654.25
ROWS = 60


def data() -> pd.DataFrame:
    """Cells no count, share or whole-column aggregate can equal by chance, and one secret outlier."""
    values = 1000.0 + np.arange(ROWS) * 0.731
    values[3] = SECRET
    return pd.DataFrame({"x": values, "label": np.arange(ROWS) % 2})


FRAME = data()
CELLS = set(FRAME["x"].tolist())


def _parse_only(caller: Any) -> bool:
    """``ast.parse`` (the traceback module uses it to underline source lines) makes a tree, never code: what
    would run the tree compiles it again, and that compile is recorded."""
    return caller.f_code.co_name == "parse" and caller.f_globals.get("__name__") == "ast"


class Tripwires:
    """Records every evaluation of code not read from a file, every unpickling, every pandas query/eval."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._armed = False

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self._armed:
            return
        if event == "exec":
            filename = getattr(args[0], "co_filename", "")
            if not os.path.isfile(filename):
                self.events.append((event, filename))
        elif event == "compile":
            source, filename = args[0], args[1]
            if _parse_only(sys._getframe(1)) or (isinstance(filename, str) and os.path.isfile(filename)):
                return
            self.events.append((event, repr(source)[:200]))
        elif event == "pickle.find_class":
            self.events.append((event, repr(args)))

    def spy(self, name: str) -> Any:
        def spied(*args: Any, **kwargs: Any) -> None:
            self.events.append((name, repr(args[1:])[:200]))
            raise AssertionError(f"{name} was called")

        return spied

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        self.events.clear()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


_TRIPWIRES = Tripwires()
# An audit hook cannot be removed; it records only while armed.
sys.addaudithook(_TRIPWIRES.audit)


@pytest.fixture(scope="module")
def tripwires() -> Iterator[Tripwires]:
    with pytest.MonkeyPatch.context() as patch:
        for owner, name in ((pd.DataFrame, "query"), (pd.DataFrame, "eval"), (pd, "eval"), (pandas_eval, "eval")):
            patch.setattr(owner, name, _TRIPWIRES.spy(f"{getattr(owner, '__name__', owner)}.{name}"))
        # Great Expectations imports and builds its machinery (annotations, generated wrappers) on first use:
        # once, before anything is armed.
        validate({"name": "warm-up", "expectations": [{"type": "expect_column_values_to_not_be_null",
                                                        "kwargs": {"column": "x"}}]}, FRAME)  # fmt: skip
        yield _TRIPWIRES


@pytest.mark.filterwarnings("ignore:.*(row_condition|condition_parser) parameter is deprecated:DeprecationWarning")
def test_the_tripwires_catch_a_row_condition_that_reaches_great_expectations(tripwires, monkeypatch) -> None:
    """Without the allow-list the payload reaches DataFrame.query: the tripwires are not blind."""
    hostile = CheckedExpectation(
        "expect_column_max_to_be_between",
        {"column": "x", "min_value": 0, "row_condition": "index == 3", "condition_parser": "pandas"},
        Release.SUCCESS,
    )
    monkeypatch.setattr(validation, "check_suite", lambda _: CheckedSuite("bypassed", (hostile,)))
    with tripwires.armed(), contextlib.suppress(DataValidationFailed):
        validate({"name": "bypassed", "expectations": []}, FRAME)
    assert ("DataFrame.query", "('index == 3',)") in tripwires.events


# --- strategies --------------------------------------------------------------------------------------------

PAYLOADS = (
    'index < @pickle.sys.modules["builtins"].eval("__import__(\'os\').getpid()")',
    "index == 3",
    "x > 0 and label == 1",
    "__import__('os').system('id')",
    "@__builtins__.exec('1')",
    "`x`.__class__.__mro__",
    "{{7*7}}",
)
HOSTILE_NAMES = ("__class__", "__dict__", "__globals__", "x + 1", "@x", "x; import os", "index == 3", "", "x\n")
HOSTILE_VALUES = st.one_of(
    st.sampled_from(PAYLOADS),
    st.sampled_from(HOSTILE_NAMES),
    st.just({"$PARAMETER": "lower"}),
    st.just({"__class__": "os.system"}),
    st.sampled_from([math.nan, math.inf, -math.inf, 2**80, True]),
    st.just([[[1]]]),
    st.none(),
)
HOSTILE_KWARGS = st.one_of(
    st.tuples(st.just("row_condition"), st.sampled_from(PAYLOADS)),
    st.tuples(st.just("condition_parser"), st.sampled_from(["pandas", "great_expectations", "python", "spark"])),
    st.tuples(st.just("result_format"), st.sampled_from(["COMPLETE", {"result_format": "COMPLETE", "partial_unexpected_count": 100}])),
    st.tuples(st.just("catch_exceptions"), st.booleans()),
    st.tuples(st.just("include_config"), st.booleans()),
    st.tuples(st.just("meta"), st.just({"class_name": "Exec"})),
    st.tuples(st.just("type_"), st.sampled_from(["__builtins__", "object", "int"])),
    st.tuples(st.sampled_from(["__init__", "__class__", "class_name", "module_name"]), st.sampled_from(PAYLOADS)),
)
HOSTILE_TYPES = (
    "expect_column_values_to_be_of_type", "expect_column_values_to_be_in_type_list",
    "expect_column_values_to_match_regex", "expect_column_kl_divergence_to_be_less_than",
    "expect_column_quantile_values_to_be_between", "expect_column_values_to_be_custom", "expect___class__",
)
SCALARS = st.one_of(st.integers(-3, 3), st.floats(-2000, 2000, allow_nan=False), st.text(max_size=8), st.booleans())


def _valid_values(expectation_type: str, name: str) -> st.SearchStrategy[Any]:
    """Values the allow-list accepts for argument ``name`` of ``expectation_type`` (mostly)."""
    if name in ("column", "column_A", "column_B"):
        return st.sampled_from(COLUMNS)
    if name == "column_list":
        return st.permutations(list(COLUMNS))
    if name in ("strict_min", "strict_max", "or_equal", "ties_okay"):
        return st.booleans()
    if name == "mostly":
        return st.floats(0, 1)
    if name == "ignore_row_if":
        pair = ("both_values_are_missing", "either_value_is_missing", "neither")
        return st.sampled_from(pair if "pair" in expectation_type else ("all_values_are_missing", "any_value_is_missing", "never"))
    if name == "value_set":
        return st.lists(SCALARS, min_size=1, max_size=5)
    if name == "value" or "count" in expectation_type:
        return st.integers(0, 2 * ROWS)
    if "proportion" in expectation_type:
        return st.floats(0, 1)
    return st.one_of(st.floats(-10, 2e6, allow_nan=False), st.sampled_from(sorted(CELLS)[:5]), st.just(SECRET))


@st.composite
def expectations(draw: st.DrawFn, *, hostile: bool) -> dict[str, Any]:
    expectation_type = draw(st.sampled_from(sorted(RULES)))
    rule = RULES[expectation_type]
    optional = sorted(set(rule.kwargs) - set(rule.required))
    names = [*rule.required, *draw(st.lists(st.sampled_from(optional), unique=True))] if optional else [*rule.required]
    if rule.bounds and not {"min_value", "max_value"} & set(names):
        names.append(draw(st.sampled_from(["min_value", "max_value"])))
    kwargs = {name: draw(_valid_values(expectation_type, name)) for name in names}
    if hostile and draw(st.booleans()):
        key, value = draw(HOSTILE_KWARGS)
        kwargs[key] = value
    elif hostile:
        # A type outside the allow-list: one that resolves type names, takes a regex, or is made up.
        expectation_type = draw(st.sampled_from(HOSTILE_TYPES))
    elif draw(st.integers(0, 7)) == 0:
        # Sometimes one argument of a valid-looking expectation is swapped for something hostile.
        kwargs[draw(st.sampled_from(names))] = draw(HOSTILE_VALUES)
    return {"type": expectation_type, "kwargs": kwargs}


@st.composite
def suites(draw: st.DrawFn, *, hostile: bool) -> dict[str, Any]:
    items = draw(st.lists(expectations(hostile=False), min_size=1, max_size=4))
    if hostile:
        items.insert(draw(st.integers(0, len(items))), draw(expectations(hostile=True)))
    return {"name": "generated", "expectations": items}


def leaked_numbers(aggregates: dict[str, Any]) -> list[float]:
    numbers: list[float] = []
    for entry in aggregates["expectations"]:
        numbers += [value for key, value in entry.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return numbers


# --- properties --------------------------------------------------------------------------------------------

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(document=suites(hostile=False))
def test_a_suite_is_refused_or_runs_without_evaluating_anything(tripwires, document) -> None:
    with tripwires.armed():
        try:
            check_suite(document)
        except SuiteRefused as refused:
            assert refused.field.startswith("expectation_suite.expectations")
            event("refused by the allow-list")
            return
        event("run by Great Expectations")
        try:
            aggregates = validate(document, FRAME)
        except DataValidationFailed as failed:
            aggregates = dict(failed.aggregates)
    assert tripwires.events == []
    text = json.dumps(aggregates)
    assert "partial_unexpected" not in text and "987654" not in text
    # No single cell (the secret included) leaves, whatever the ranges asked.
    assert not CELLS & set(leaked_numbers(aggregates))


@FAST
@given(document=suites(hostile=True))
def test_a_hostile_suite_is_refused_before_great_expectations_sees_it(tripwires, document) -> None:
    with tripwires.armed():
        with pytest.raises(SuiteRefused) as refused:
            validate(document, FRAME)
        with pytest.raises(JobSpecError) as rejected:
            JobSpec.from_json(job_spec(expectation_suite=document))
    assert tripwires.events == []
    assert refused.value.field.startswith("expectation_suite.expectations[")
    assert rejected.value.field == refused.value.field


def job_spec(**changes: Any) -> dict[str, Any]:
    return {
        "run_id": "manual__fuzz", "nonce": "n0nce-0f-at-least-22-chars",
        "kek_id": "https://127.0.0.1:8443/keys/kek/0123456789abcdef",
        "datasets": [{"container": "datasets", "manifest": "bc/v1/manifest.json"}], "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [8]}},
        "hyperparameters": {"epochs": 1, "batch_size": 32, "learning_rate": 0.01, "seed": 7},
        "checkpoints": {"container": "checkpoints", "prefix": "run/"},
        "output": {"container": "models", "blob": "run/model.sealed"},
        **changes,
    }  # fmt: skip


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    hyperparameters=st.fixed_dictionaries(
        {"epochs": ANY_JSON | st.floats(1, 10), "batch_size": ANY_JSON, "learning_rate": ANY_JSON, "seed": ANY_JSON}
    ),
    params=st.dictionaries(st.sampled_from(["hidden", "dropout", "channels", "__class__", "act"]), ANY_JSON, max_size=3),
)
def test_a_job_spec_is_refused_by_field_or_holds_only_declared_types(hyperparameters, params) -> None:
    try:
        spec = JobSpec.from_json(job_spec(hyperparameters=hyperparameters, model={"name": "mlp", "params": params}))
    except JobSpecError as refused:
        assert refused.field.split(".")[0].split("[")[0] in ("hyperparameters", "model")
        return
    hyper = spec.hyperparameters
    for whole in (hyper.epochs, hyper.batch_size, hyper.seed):
        assert type(whole) is int
    assert type(hyper.learning_rate) in (int, float) and math.isfinite(hyper.learning_rate)
    for value in spec.model.params.values():
        items = value if isinstance(value, tuple) else (value,)
        assert all(isinstance(item, (bool, int, float, str)) for item in items)
        assert all(math.isfinite(item) for item in items if isinstance(item, float))
