"""Pydantic types shared by request and response bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel as _PydanticModel
from pydantic import BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from billing.domain.errors import InvalidAmount
from billing.domain.money import format_usd, parse_usd


class StrictModel(_PydanticModel):
    """Request bodies: unknown fields are refused, nothing is coerced silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(_PydanticModel):
    model_config = ConfigDict(extra="forbid")


_USD_EXAMPLE = "12.500000000"
_USD_PATTERN = r"^-?\d{1,12}(\.\d{1,9})?$"


def _usd_parser(*, allow_negative: bool, allow_zero: bool) -> BeforeValidator:
    def parse(value: object) -> int:
        try:
            return parse_usd(value, allow_negative=allow_negative, allow_zero=allow_zero)
        except InvalidAmount as exc:  # pydantic reports ValueError with its location
            raise ValueError(exc.detail) from exc

    return BeforeValidator(parse)


def _usd_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "pattern": _USD_PATTERN, "examples": [_USD_EXAMPLE], "description": description}
    )


_serialize_usd = PlainSerializer(format_usd, return_type=str)

#: A non-negative USD amount: decimal string in, nano-USD ``int`` inside, decimal string out.
UsdAmount = Annotated[
    int,
    _usd_parser(allow_negative=False, allow_zero=True),
    _serialize_usd,
    _usd_schema("USD as a decimal string, up to 9 decimals"),
]
PositiveUsdAmount = Annotated[
    int,
    _usd_parser(allow_negative=False, allow_zero=False),
    _serialize_usd,
    _usd_schema("USD > 0 as a decimal string"),
]
SignedUsdAmount = Annotated[
    int,
    _usd_parser(allow_negative=True, allow_zero=True),
    _serialize_usd,
    _usd_schema("signed USD as a decimal string"),
]

IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class HealthResponse(ResponseModel):
    status: str
    database: str
    version: str
