"""What every contract shares: the base model, field types, and the field an invalid document names.

:class:`Contract` is frozen, refuses unknown fields and converts nothing (pydantic's strict mode): a JSON
integer is an ``int``, not ``1.0`` or ``"1"``; a number is finite where the field says so; a string is a
``str``. Two things a JSON document can only send in one way are accepted in that way: an array for a
tuple (:data:`Items`) and a value for an enum (:data:`Lax`); their items are as strict as everywhere else.

:func:`matching` makes a string type that must match a regular expression as a whole (``re.fullmatch``:
no trailing newline slips past a ``$``). :func:`refusal` is how a rule across fields says which field
breaks it, and :func:`first_error` turns pydantic's error into the dotted path of that field and a reason
(``hyperparameters.epochs``, ``datasets[0].manifest``): what the agent's ``400`` names. :meth:`Contract.from_json`
and :meth:`Contract.from_body` raise the contract's :class:`DocumentInvalid` naming that field.
"""

from __future__ import annotations

import base64
import binascii

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from securetrain.core.errors import ConfigurationError
from securetrain.core.json_input import JsonInputError, field_path, read_json_object

T = TypeVar("T")


class DocumentInvalid(ConfigurationError):
    """A document is not what its contract takes; ``field`` is the dotted path of what is wrong."""

    #: What the document is called in messages.
    document = "document"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{self.document} field {field!r}: {reason}")
        self.field = field
        self.reason = reason


class Contract(BaseModel):
    """A message between zones: frozen, no unknown fields, no conversions (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    #: What :meth:`from_json` and :meth:`from_body` raise.
    invalid: ClassVar[type[DocumentInvalid]] = DocumentInvalid

    @classmethod
    def from_json(cls, document: Any) -> Self:
        """Validate a decoded JSON document; :attr:`invalid` names the first field that is wrong."""
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            field, reason = first_error(exc)
            raise cls.invalid(field or f"(the {cls.invalid.document})", reason) from None

    def to_json(self) -> dict[str, Any]:
        """The document :meth:`from_json` reads back."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_body(cls, body: bytes, *, max_bytes: int) -> Self:
        """A request body: strict JSON (:mod:`securetrain.core.json_input`) of one object, then every field checked."""
        try:
            document = read_json_object(body, max_bytes=max_bytes, what=f"the {cls.invalid.document}")
        except JsonInputError as exc:
            raise cls.invalid(exc.field or "(body)", exc.reason) from None
        return cls.from_json(document)


#: A JSON array as a tuple (a list is accepted for it; each item is validated strictly).
Items = Annotated[tuple[T, ...], Strict(False)]
#: An enum field that accepts the enum's value, as JSON sends it.
Lax = Annotated[T, Strict(False)]


def freeze(value: Any) -> Any:
    """A read-only deep copy of JSON data (objects as read-only mappings, arrays as tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """:func:`freeze` undone: plain dicts and lists again, as JSON writes them."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


#: Validated JSON data held read-only (so a message cannot change after it was checked), dumped as JSON.
#: A field of this type with a default needs ``validate_default=True``, or the default stays mutable.
Frozen = Annotated[T, AfterValidator(freeze), PlainSerializer(thaw)]


def _present(value: Any) -> Any:
    if value is None:
        raise refusal("null is not allowed here; leave the field out instead")
    return value


#: A field that may be left out, but is never null when present (absent and null are not two ways of saying
#: the same thing); left out of the dump when absent, so the document reads back the same.
Omittable = Annotated[T | None, BeforeValidator(_present), Field(default=None, exclude_if=lambda value: value is None)]
#: A JSON object whose contents the contract leaves to the part that reads it (aggregates, a signed log).
JsonObject = dict[str, Any]


def refusal(reason: str, *at: str | int) -> PydanticCustomError:
    """The error a validator raises when ``reason`` forbids a value; ``at`` is the path below where it runs."""
    return PydanticCustomError("refused", "{reason}", {"reason": reason, "at": at})


def canonical_base64(value: Any) -> bytes:
    """A JSON string of canonical standard base64 (padded, no whitespace), decoded: one string per value, so two
    documents with the same bytes are the same document; :func:`refusal` otherwise."""
    if not isinstance(value, str):
        raise refusal("must be a base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise refusal("is not valid base64") from None
    if base64.b64encode(decoded).decode() != value:
        raise refusal("is not canonical base64")
    return decoded


def matching(pattern: str, description: str) -> Any:
    """A string type that ``pattern`` must match as a whole; ``description`` says what is allowed."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise refusal(f"{value!r} is not allowed here. {description}")
        return value

    return Annotated[str, AfterValidator(check), Field(json_schema_extra={"pattern": f"^(?:{pattern})$"}, description=description)]


def _location(details: Mapping[str, Any]) -> list[str | int]:
    """Where an error lies: pydantic's location (a wrong key of a free-form object at the key itself), then
    the path a :func:`refusal` names below it."""
    return [*(part for part in details["loc"] if part != "[key]"), *(details.get("ctx") or {}).get("at", ())]


def first_error(error: ValidationError, *, root: tuple[str | int, ...] = ()) -> tuple[str, str]:
    """The first problem, by field path, as (dotted path of the field, reason);
    ``root`` prefixes the path. An empty path is ``""`` (the document itself is wrong, e.g. not an object).
    """
    # Errors inside an object or array come before an error about it as a whole: pydantic counts an array's
    # length after dropping the items that failed, so the items' errors are the ones that explain it.
    details = min(error.errors(include_url=False), key=lambda item: [*map(str, _location(item)), "\U0010ffff"])
    path = field_path([*root, *_location(details)])
    context = details.get("ctx") or {}
    kind = details["type"]
    if kind == "extra_forbidden":
        return path, "unknown field; remove it"
    if kind == "missing":
        return path, "required field is missing"
    if kind == "refused":
        return path, context["reason"]
    return path, details["msg"]
