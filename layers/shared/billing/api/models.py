"""Pydantic types shared by request and response bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict, Field


class StrictModel(_PydanticModel):
    """Request bodies: unknown fields are refused, nothing is coerced silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(_PydanticModel):
    model_config = ConfigDict(extra="forbid")


IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class HealthResponse(ResponseModel):
    status: str
    database: str
    version: str
