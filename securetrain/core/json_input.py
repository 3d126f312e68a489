"""Strict JSON input: how every service of ours reads a JSON request body it did not write.

Python's :func:`json.loads` is lenient where a hostile sender can profit:

- it accepts ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON, RFC 8259 section 6), and a number too large
  for a double (``1e400``) becomes ``inf``: a NaN passes every range check (``NaN > 10`` is false);
- the last of two equal keys wins, while another parser may keep the first: a document that one check
  reads one way and the code after it another;
- nesting is bounded only by the interpreter's recursion limit, so ``[[[[...]]]]`` raises
  ``RecursionError`` (a 500) instead of a refusal;
- strings may hold lone surrogates (``"\\ud800"``), which fail later, when the value is written as UTF-8.

:func:`read_json` refuses all of these with :class:`JsonInputError`, whose ``field`` names where the
offending value is (``hyperparameters.learning_rate``) when the document got that far, and bounds size and
depth. What a document must hold is then the business of the contract that reads it
(:mod:`securetrain.core.contracts`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from securetrain.core.errors import ConfigurationError

#: Deep enough for every document we define (a job spec's deepest value is at depth 6), shallow enough that
#: reading and walking a document never nears the interpreter's recursion limit.
MAX_DEPTH = 32


class JsonInputError(ConfigurationError):
    """A request body is not acceptable JSON; ``field`` is the dotted path of the bad value, if known."""

    def __init__(self, reason: str, *, field: str | None = None, what: str = "the request body") -> None:
        super().__init__(f"{what} {reason}")
        self.field = field
        self.reason = reason


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


class _NonFinite:
    """A ``NaN``/``Infinity`` literal, kept until the walk can say where it stood."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def field_path(parts: Any) -> str:
    """``("a", 0, "b")`` as ``a[0].b``: how errors name a place in a JSON document."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise JsonInputError(f"has the key {key!r} twice in one object; send it once")
        document[key] = value
    return document


def _check_tree(document: Any, max_depth: int, what: str) -> None:
    """Walk ``document`` without recursion: depth, finite numbers, strings that are valid Unicode."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if len(path) >= max_depth and isinstance(value, (dict, list)):
            raise JsonInputError(f"nests deeper than {max_depth} levels", what=what)
        if isinstance(value, _NonFinite):
            where = field_path(path) or "(the document)"
            reason = f"has {value.literal} at {where!r}, which is not a JSON number; send a finite number"
            raise JsonInputError(reason, field=where, what=what)
        if isinstance(value, float) and not math.isfinite(value):
            where = field_path(path) or "(the document)"
            reason = f"has a number beyond a double at {where!r}; send a finite number"
            raise JsonInputError(reason, field=where, what=what)
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path, what)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, path, what)


def _check_text(text: str, path: tuple[Any, ...], what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        where = field_path(path)
        reason = f"has a lone surrogate (not Unicode text) in a string at {where!r}"
        raise JsonInputError(reason, field=where or None, what=what) from None


def read_json(body: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "the request body") -> Any:
    """The JSON document in ``body``, or :class:`JsonInputError` saying what is wrong with it.

    Refuses: more than ``max_bytes``, anything but UTF-8, invalid JSON, ``NaN``/``Infinity`` and numbers
    beyond a double, duplicate keys, nesting deeper than ``max_depth``, lone surrogates.
    """
    if len(body) > max_bytes:
        raise JsonInputError(f"is {len(body)} bytes; at most {max_bytes} are accepted", what=what)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonInputError(f"is not UTF-8 ({exc.reason} at byte {exc.start})", what=what) from None
    try:
        document = json.loads(text, parse_constant=_NonFinite, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise JsonInputError(f"nests deeper than {max_depth} levels", what=what) from None
    except JsonInputError as exc:
        raise JsonInputError(exc.reason, what=what) from None
    except ValueError as exc:
        raise JsonInputError(f"is not JSON: {exc}", what=what) from None
    _check_tree(document, max_depth, what)
    return document


def read_json_object(
    body: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "the request body"
) -> dict[str, Any]:
    """:func:`read_json`, and the document must be a JSON object."""
    document = read_json(body, max_bytes=max_bytes, max_depth=max_depth, what=what)
    if not isinstance(document, dict):
        raise JsonInputError(f"is not a JSON object (it is {_JSON_TYPES.get(type(document), 'null')})", what=what)
    return document
