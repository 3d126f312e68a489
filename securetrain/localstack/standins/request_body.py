"""What every stand-in does with a JSON request body once it is strictly decoded: read it as a typed model.

A body model is frozen and strictly typed and ignores properties the stand-in does not use, as the Azure
services do; a body of the wrong shape is :class:`BodyInvalid` naming the field, which each service turns into
its own 400 error shape.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from securetrain.core.contracts.base import first_error


class BodyInvalid(ValueError):
    """A body is not of its documented shape; ``field`` is the dotted path of what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"'{field}': {reason}")
        self.field, self.reason = field, reason


class RequestBody(BaseModel):
    """A JSON object a stand-in reads: frozen, strict types, unused properties ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    @classmethod
    def parse(cls, document: Any) -> Self:
        """``document`` (a decoded JSON object) as this body; :class:`BodyInvalid` naming the field if not."""
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise BodyInvalid(*first_error(exc)) from None
