"""Money: integer nano-USD everywhere, decimal strings at the edge (DESIGN §2).

Nothing here ever touches a float. Amounts cross the API as strings such as
``"12.345000000"``; they are parsed with :class:`decimal.Decimal` and rejected
when they carry more than nine decimals, are not finite, or fall out of range.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from billing.domain.errors import InvalidAmount

NANO_PER_USD = 1_000_000_000
NANO_DECIMALS = 9

#: Largest single amount accepted at the edge: one billion USD. Balances are
#: BIGINT nano-USD (max ~9.22e9 USD), so sums of a few such amounts still fit.
MAX_AMOUNT_NANO = 1_000_000_000 * NANO_PER_USD

_DECIMAL_STRING = re.compile(r"^[+-]?([0-9]+)(\.([0-9]+))?$")  # ASCII digits: \d also matches "１"


def parse_usd(text: object, *, allow_negative: bool = False, allow_zero: bool = True) -> int:
    """Parse a decimal USD string into integer nano-USD, exactly.

    Only ``str`` is accepted: a JSON number would already have passed through a
    binary float, and ``1e3``-style or ``NaN`` strings are refused too.
    """
    if not isinstance(text, str):
        raise InvalidAmount(f'must be a decimal string such as "12.50", not {type(text).__name__}')
    candidate = text.strip()
    match = _DECIMAL_STRING.fullmatch(candidate)
    if match is None:
        raise InvalidAmount(f"{text!r} is not a plain decimal number")
    fraction = match.group(3) or ""
    if len(fraction) > NANO_DECIMALS:
        raise InvalidAmount(f"{text!r} has more than {NANO_DECIMALS} decimal places")
    if len(match.group(1)) > 12:
        raise InvalidAmount(f"{text!r} is out of range")
    try:
        value = Decimal(candidate)
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise InvalidAmount(f"{text!r} is not a decimal number") from exc
    nano = int(value.scaleb(NANO_DECIMALS))
    return check_amount_nano(nano, allow_negative=allow_negative, allow_zero=allow_zero)


def check_amount_nano(nano: int, *, allow_negative: bool = False, allow_zero: bool = True) -> int:
    """Range and sign rules shared by every amount that enters the ledger."""
    if isinstance(nano, bool) or not isinstance(nano, int):
        raise InvalidAmount("amount must be an integer number of nano-USD")
    if abs(nano) > MAX_AMOUNT_NANO:
        raise InvalidAmount("amount is out of range (at most 1,000,000,000 USD)")
    if nano < 0 and not allow_negative:
        raise InvalidAmount("amount must not be negative")
    if nano == 0 and not allow_zero:
        raise InvalidAmount("amount must not be zero")
    return nano


def format_usd(nano: int) -> str:
    """Format nano-USD as a decimal string with exactly nine decimals."""
    sign = "-" if nano < 0 else ""
    whole, fraction = divmod(abs(nano), NANO_PER_USD)
    return f"{sign}{whole}.{fraction:09d}"


def round_usd_to_nano(amount_usd: Decimal) -> int:
    """Round an exactly computed USD cost to nano-USD, half-even, once per charge."""
    if not amount_usd.is_finite():
        raise InvalidAmount("cost is not a finite number")
    return int(amount_usd.scaleb(NANO_DECIMALS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


# Pydantic field types for models at every boundary (API bodies, catalog files).
_USD_EXAMPLE = "12.500000000"
_USD_PATTERN = r"^-?[0-9]{1,12}(\.[0-9]{1,9})?$"


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
