"""Pydantic types shared by request and response bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict, Field, field_validator


def _refuse_unstorable_text(value: Any) -> None:
    """Postgres text holds neither NUL characters nor lone surrogates (valid JSON may carry both)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL characters are not allowed")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("unpaired surrogates are not allowed") from None
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _refuse_unstorable_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_unstorable_text(key)
            _refuse_unstorable_text(item)


class StrictModel(_PydanticModel):
    """Request bodies: unknown fields are refused, nothing is coerced silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        _refuse_unstorable_text(value)
        return value


class ResponseModel(_PydanticModel):
    model_config = ConfigDict(extra="forbid")


IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class HealthResponse(ResponseModel):
    status: str
    database: str
    version: str
