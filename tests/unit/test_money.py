from __future__ import annotations

import json
from decimal import Decimal

import pytest
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from hypothesis import given
from hypothesis import strategies as st

from billing.api.http import build_app
from billing.api.models import StrictModel
from billing.domain.deposits import nano_to_units, units_to_nano
from billing.domain.errors import InvalidAmount
from billing.domain.money import (
    MAX_AMOUNT_NANO,
    PositiveUsdAmount,
    SignedUsdAmount,
    UsdAmount,
    format_usd,
    parse_usd,
    round_usd_to_nano,
)


@pytest.mark.parametrize(
    ("text", "nano"),
    [
        ("0", 0),
        ("1", 1_000_000_000),
        ("12.5", 12_500_000_000),
        ("0.000000001", 1),
        ("  3.10 ", 3_100_000_000),
        ("+7", 7_000_000_000),
        ("1000000000", MAX_AMOUNT_NANO),
    ],
)
def test_parses_exact_decimal_strings(text: str, nano: int) -> None:
    assert parse_usd(text) == nano


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        2,
        None,
        True,
        "NaN",
        "nan",
        "Infinity",
        "-inf",
        "1e3",
        "1.0000000001",
        "0x10",
        "",
        "1,5",
        "--1",
        "1000000000.000000001",
        "9999999999999",
    ],
)
def test_rejects_what_is_not_an_exact_amount(value: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_usd(value)


def test_sign_rules() -> None:
    with pytest.raises(InvalidAmount):
        parse_usd("-1")
    assert parse_usd("-1", allow_negative=True) == -1_000_000_000
    with pytest.raises(InvalidAmount):
        parse_usd("0", allow_zero=False)


@given(st.integers(min_value=-MAX_AMOUNT_NANO, max_value=MAX_AMOUNT_NANO))
def test_format_and_parse_round_trip(nano: int) -> None:
    text = format_usd(nano)
    assert len(text.split(".")[1]) == 9
    assert parse_usd(text, allow_negative=True) == nano
    assert Decimal(text) * 1_000_000_000 == nano


def test_rounds_half_even_once() -> None:
    assert round_usd_to_nano(Decimal("0.0000000005")) == 0
    assert round_usd_to_nano(Decimal("0.0000000015")) == 2
    assert round_usd_to_nano(Decimal("-0.0000000025")) == -2
    with pytest.raises(InvalidAmount):
        round_usd_to_nano(Decimal("NaN"))


class _Charge(StrictModel):
    amount: PositiveUsdAmount
    refundable: UsdAmount = 0
    correction: SignedUsdAmount = 0


def _app_with_money_route() -> APIGatewayHttpResolver:
    app = build_app()

    @app.post("/charge")
    def charge(body: _Charge) -> _Charge:
        return body

    return app


def _post(app: APIGatewayHttpResolver, raw_body: str) -> dict[str, object]:
    event = {
        "version": "2.0",
        "routeKey": "POST /charge",
        "rawPath": "/charge",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "http": {
                "method": "POST",
                "path": "/charge",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "test",
            },
            "requestId": "req-1",
            "routeKey": "POST /charge",
            "stage": "$default",
        },
        "body": raw_body,
        "isBase64Encoded": False,
    }
    return dict(app.resolve(event, None))


@pytest.mark.parametrize(
    "raw_amount",
    ["1.5", '"NaN"', '"1.0000000001"', '"-2"', '"0"', '"1000000000.1"', '"1e2"', "null", '"Infinity"'],
)
def test_money_fields_answer_422_problem(raw_amount: str) -> None:
    response = _post(_app_with_money_route(), f'{{"amount": {raw_amount}}}')
    assert response["statusCode"] == 422
    assert response["headers"]["Content-Type"] == "application/problem+json"
    problem = json.loads(str(response["body"]))
    assert problem["status"] == 422
    assert problem["errors"][0]["loc"][-1] == "amount"


def test_money_fields_round_trip_as_strings_and_refuse_unknown_fields() -> None:
    app = _app_with_money_route()
    ok = _post(app, '{"amount": "0.000000001", "correction": "-3.5"}')
    assert ok["statusCode"] == 200
    assert json.loads(str(ok["body"])) == {
        "amount": "0.000000001",
        "refundable": "0.000000000",
        "correction": "-3.500000000",
    }
    unknown = _post(app, '{"amount": "1", "surprise": true}')
    assert unknown["statusCode"] == 422


def test_token_units_convert_exactly_and_18_decimals_truncate_below_nano() -> None:
    assert units_to_nano(20_000_000, 6) == 20 * 10**9  # 20 USDC
    assert units_to_nano(1, 6) == 1_000  # 0.000001 USD
    assert (
        units_to_nano(12_345_678_901_234_567_891, 18) == 12_345_678_901
    )  # 12.345678901234… USD, dust dropped
    assert units_to_nano(999_999_999, 18) == 0  # below one nano-USD
    assert nano_to_units(20 * 10**9, 6) == 20_000_000
    assert nano_to_units(1, 6) == 1  # rounds up: paying it always covers the amount
    assert nano_to_units(5, 18) == 5 * 10**9
