"""historical-billing through its Lambda handler: the totals are the ledger's sums, in JSON and in CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from jsonschema import Draft202012Validator

from billing.adapters.postgres.history_store import PostgresHistoryStore, report_statement
from billing.api.openapi import load_openapi_document
from billing.domain import ledger
from billing.domain.billing_history import (
    BillingInterval,
    BillingPeriod,
    bucket_count,
    bucket_start,
    shift_buckets,
)
from billing.domain.ledger import EntryKind, LedgerOperation
from billing.domain.money import parse_usd
from local.handlers import LocalLambdaContext, load_handler
from local.template import load_template
from tests.conftest import load_event
from tests.integration.ledger_support import assert_ledger_invariants, ledger_on, new_purchase

FUNCTION = next(function for function in load_template().functions if function.folder == "historical_billing")
USD = 10**9
MONEY_FIELDS = ("opening_balance", "usage_cost", "deposits", "adjustments", "closing_balance")

#: Ranges that cut buckets in the middle, start on an entry (included) and end on one (excluded).
RANGES = {
    "hour": ("2025-02-10T09:30:00Z", "2025-02-11T02:15:00Z", 18),
    "day": ("2025-02-01T00:00:00Z", "2025-03-15T12:00:00Z", 43),
    "week": ("2025-01-20T00:00:00Z", "2025-04-01T00:00:00Z", 11),
    "month": ("2025-01-15T00:00:00Z", "2025-04-20T00:00:00Z", 4),
}


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def _timeline(purchase_id: UUID) -> list[tuple[datetime, LedgerOperation]]:
    """Every kind of entry, spread over hours, days, weeks and months, in time order."""
    hold_expiry = datetime.now(UTC) + timedelta(hours=1)
    return [
        (utc(2025, 1, 10, 8), ledger.credit(purchase_id, 100 * USD, "dep-1")),
        (utc(2025, 1, 25, 10), _usage(purchase_id, "use-1", 1_500_000_000, "gemini:pro", "1200", "tokens")),
        (utc(2025, 2, 1), _usage(purchase_id, "use-2", 250_000_001, "explicit", "3", "requests")),
        (utc(2025, 2, 10, 9, 30), ledger.credit(purchase_id, 20 * USD, "dep-2")),
        (utc(2025, 2, 10, 10, 5), _usage(purchase_id, "use-3", 123_456_789, "gemini:pro", "800.5", "tokens")),
        (utc(2025, 2, 10, 10, 6), _usage(purchase_id, "use-4", 7, "s3:bucket", "1024", "bytes")),
        (utc(2025, 2, 10, 10, 7), ledger.place_hold(purchase_id, uuid4(), USD, hold_expiry, "hold-1")),
        (
            utc(2025, 2, 10, 23, 59, 59, 999_999),
            ledger.adjustment(purchase_id, -500_000_000, "adj-1", reason="duplicate credit"),
        ),
        (utc(2025, 2, 11, 2, 15), _usage(purchase_id, "use-5", 1_000_000, "gemini:pro", "10", "tokens")),
        (utc(2025, 2, 17, 12), ledger.credit(purchase_id, 3 * USD, "rev-1", kind=EntryKind.REVERSAL)),
        (utc(2025, 3, 1), ledger.credit(purchase_id, 50 * USD, "dep-3")),
        (utc(2025, 3, 15, 12), _usage(purchase_id, "use-6", 2 * USD, "explicit", "1", "requests")),
        (utc(2025, 3, 20, 18), _usage(purchase_id, "use-7", 999, "explicit", "2", "requests")),
        (utc(2025, 4, 5), ledger.adjustment(purchase_id, USD, "adj-2", reason="credit note")),
        (utc(2025, 4, 25), _usage(purchase_id, "use-8", 5_000_000, "gemini:pro", "5", "tokens")),
    ]


def _usage(
    purchase_id: UUID, key: str, cost_nano: int, meter: str, quantity: str, unit: str
) -> LedgerOperation:
    return ledger.debit(purchase_id, cost_nano, key, meter=meter, quantity=quantity, unit=unit)


@pytest.fixture
def purchase(db: psycopg.Connection[Any], handler_env: None) -> Iterator[tuple[UUID, str, str]]:
    """A purchase whose ledger follows the timeline; entries backdated in order (invariants hold)."""
    purchase_id, customer_key, vendor_key = new_purchase(db)
    service = ledger_on(db)
    for at, operation in _timeline(purchase_id):
        receipt = service.apply(operation)
        db.execute("UPDATE ledger_entries SET at = %s WHERE id = %s", (at, receipt.entry_id))
    assert_ledger_invariants(db, purchase_id)
    yield purchase_id, customer_key, vendor_key


# ------------------------------------------------------------------ requests through the handler


def _event(
    purchase_id: UUID | str, key: str, body: dict[str, Any] | None, fixture: str = "historical_billing_daily"
) -> dict[str, Any]:
    """The fixture's event, pointed at another purchase, key and body."""
    event = load_event(fixture)
    path = f"/purchase/{purchase_id}/historical-billing"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = {"purchase_id": str(purchase_id)}
    event["headers"]["authorization"] = f"Bearer {key}"
    if body is None:
        event.pop("body", None)
        event["headers"].pop("content-type", None)
        event["headers"].pop("content-length", None)
    else:
        event["body"] = json.dumps(body)
        event["headers"]["content-length"] = str(len(event["body"].encode()))
    return event


def _call(purchase_id: UUID | str, key: str, body: dict[str, Any] | None) -> dict[str, Any]:
    fixture = (
        "historical_billing_monthly_csv"
        if (body or {}).get("format") == "csv"
        else "historical_billing_daily"
    )
    response: dict[str, Any] = load_handler(FUNCTION)(
        _event(purchase_id, key, body, fixture), LocalLambdaContext.for_function(FUNCTION)
    )
    return response


def _report(purchase_id: UUID, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = _call(purchase_id, key, body)
    assert response["statusCode"] == 200, response
    assert response["headers"]["Content-Type"] == "application/json"
    report: dict[str, Any] = json.loads(response["body"])
    return report


# ------------------------------------------------------------------ the ledger, summed independently


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _nano(text: str) -> int:
    return parse_usd(text, allow_negative=True)


def _ledger_sums(
    db: psycopg.Connection[Any], purchase_id: UUID, start: datetime, end: datetime
) -> dict[str, int]:
    """What the report must say for [start, end), straight from ledger_entries."""
    usage, deposits, adjustments, entries = db.execute(
        """SELECT COALESCE(sum(-amount_nano) FILTER (WHERE kind = 'usage'), 0),
                  COALESCE(sum(amount_nano) FILTER (WHERE kind = 'deposit'), 0),
                  COALESCE(sum(amount_nano) FILTER (WHERE kind IN ('adjustment', 'reversal')), 0),
                  count(*) FILTER (WHERE amount_nano <> 0)
             FROM ledger_entries WHERE purchase_id = %s AND at >= %s AND at < %s""",
        (purchase_id, start, end),
    ).fetchone() or (0, 0, 0, 0)

    def balance_before(at: datetime) -> int:
        row = db.execute(
            """SELECT balance_after_nano FROM ledger_entries WHERE purchase_id = %s AND at < %s
                ORDER BY at DESC, id DESC LIMIT 1""",
            (purchase_id, at),
        ).fetchone()
        return int(row[0]) if row else 0

    return {
        "opening_balance": balance_before(start),
        "usage_cost": int(usage),
        "deposits": int(deposits),
        "adjustments": int(adjustments),
        "closing_balance": balance_before(end),
        "entries": int(entries),
    }


def _as_nano(bucket: dict[str, Any]) -> dict[str, int]:
    return {**{name: _nano(bucket[name]) for name in MONEY_FIELDS}, "entries": int(bucket["entries"])}


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("interval", list(RANGES))
def test_json_totals_and_every_bucket_equal_the_ledger_sums(
    interval: str, purchase: tuple[UUID, str, str], db: psycopg.Connection[Any]
) -> None:
    purchase_id, customer_key, _ = purchase
    start, end, buckets = RANGES[interval]
    report = _report(purchase_id, customer_key, {"interval": interval, "start": start, "end": end})

    assert (report["interval"], _at(report["start"]), _at(report["end"])) == (interval, _at(start), _at(end))
    totals = _as_nano(report["totals"])
    assert totals == _ledger_sums(db, purchase_id, _at(start), _at(end))
    assert totals["entries"] > 0 and totals["usage_cost"] > 0
    assert len(report["buckets"]) == buckets
    assert _at(report["buckets"][0]["start"]) == _at(start) and _at(report["buckets"][-1]["end"]) == _at(end)
    for bucket, following in zip(report["buckets"], report["buckets"][1:], strict=False):
        assert (
            bucket["end"] == following["start"] and bucket["closing_balance"] == following["opening_balance"]
        )
        grid_start = _at(following["start"])
        assert grid_start.minute == grid_start.second == 0
        if interval == "week":
            assert grid_start.weekday() == 0 and grid_start.hour == 0
        if interval == "month":
            assert grid_start.day == 1 and grid_start.hour == 0
    for bucket in report["buckets"]:
        sums = _as_nano(bucket)
        assert sums == _ledger_sums(db, purchase_id, _at(bucket["start"]), _at(bucket["end"])), bucket
        assert (
            sums["opening_balance"] + sums["deposits"] - sums["usage_cost"] + sums["adjustments"]
            == sums["closing_balance"]
        )
        assert bucket["usage"] is None  # not grouped
    for name in ("usage_cost", "deposits", "adjustments", "entries"):
        assert sum(_as_nano(bucket)[name] for bucket in report["buckets"]) == totals[name]


@pytest.mark.parametrize("interval", list(RANGES))
def test_csv_gives_the_same_numbers_as_json(
    interval: str, purchase: tuple[UUID, str, str], db: psycopg.Connection[Any]
) -> None:
    purchase_id, customer_key, _ = purchase
    start, end, _ = RANGES[interval]
    body = {"interval": interval, "start": start, "end": end, "group_by": "meter"}
    report = _report(purchase_id, customer_key, body)

    response = _call(purchase_id, customer_key, {**body, "format": "csv"})
    assert response["statusCode"] == 200, response
    assert response["headers"]["Content-Type"] == "text/csv; charset=utf-8"
    assert response["headers"]["Content-Disposition"].startswith("attachment; filename=")
    rows = list(csv.DictReader(io.StringIO(response["body"])))

    bucket_rows = [row for row in rows if row["row_type"] == "bucket"]
    assert [(row["start"], row["end"]) for row in bucket_rows] == [
        (bucket["start"], bucket["end"]) for bucket in report["buckets"]
    ]
    assert [_as_nano(row) for row in bucket_rows] == [_as_nano(bucket) for bucket in report["buckets"]]
    (total,) = [row for row in rows if row["row_type"] == "total"]
    assert (
        _as_nano(total) == _as_nano(report["totals"]) == _ledger_sums(db, purchase_id, _at(start), _at(end))
    )
    for name in ("usage_cost", "deposits", "adjustments", "entries"):
        assert sum(_as_nano(row)[name] for row in bucket_rows) == _as_nano(total)[name]
    for row in bucket_rows:
        meter_rows = [
            meter for meter in rows if meter["row_type"] == "bucket_meter" and meter["start"] == row["start"]
        ]
        assert sum(_nano(meter["usage_cost"]) for meter in meter_rows) == _nano(row["usage_cost"])
    total_meters = [
        (row["meter"], row["unit"], row["quantity"], row["usage_cost"])
        for row in rows
        if row["row_type"] == "total_meter"
    ]
    assert total_meters == [
        (usage["meter"], usage["unit"], usage["quantity"], usage["cost"])
        for usage in report["totals"]["usage"]
    ]


def test_group_by_meter_sums_per_meter_and_unit(
    purchase: tuple[UUID, str, str], db: psycopg.Connection[Any]
) -> None:
    purchase_id, customer_key, _ = purchase
    start, end = utc(2025, 1, 1), utc(2025, 5, 1)
    report = _report(
        purchase_id,
        customer_key,
        {"interval": "week", "start": start.isoformat(), "end": end.isoformat(), "group_by": "meter"},
    )
    expected = [
        (meter, unit, Decimal(quantity), int(cost))
        for meter, unit, quantity, cost in db.execute(
            """SELECT meter, unit, sum(quantity), sum(-amount_nano) FROM ledger_entries
                WHERE purchase_id = %s AND kind = 'usage' AND at >= %s AND at < %s
                GROUP BY meter, unit ORDER BY meter, unit""",
            (purchase_id, start, end),
        )
    ]
    got = [
        (usage["meter"], usage["unit"], Decimal(usage["quantity"]), _nano(usage["cost"]))
        for usage in report["totals"]["usage"]
    ]
    assert got == expected
    assert {meter for meter, *_ in got} == {"explicit", "gemini:pro", "s3:bucket"}
    assert ("gemini:pro", "tokens", Decimal("2015.5"), 1_629_456_789) in got
    for bucket in report["buckets"]:
        assert sum(_nano(usage["cost"]) for usage in bucket["usage"]) == _nano(bucket["usage_cost"])


def test_default_range_ends_now_and_includes_fresh_entries(
    purchase: tuple[UUID, str, str], db: psycopg.Connection[Any]
) -> None:
    purchase_id, customer_key, _ = purchase
    ledger_on(db).apply(_usage(purchase_id, "fresh", 42, "explicit", "1", "requests"))
    before = datetime.now(UTC)
    report = _report(purchase_id, customer_key, {"interval": "day"})

    assert len(report["buckets"]) == 30
    first, last = report["buckets"][0], report["buckets"][-1]
    assert _at(first["start"]) == _at(first["start"]).replace(hour=0, minute=0, second=0, microsecond=0)
    assert before <= _at(report["end"]) <= datetime.now(UTC)
    assert _nano(last["usage_cost"]) == 42 and last["entries"] == 1
    (balance,) = db.execute(
        "SELECT balance_nano FROM purchases WHERE id = %s", (purchase_id,)
    ).fetchone() or (0,)
    assert _nano(report["totals"]["closing_balance"]) == balance


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"interval": "minute"}, "'hour', 'day', 'week' or 'month'"),
        ({"interval": "day", "start": "2025-03-02T00:00:00Z", "end": "2025-03-02T00:00:00Z"}, "before end"),
        ({"interval": "day", "start": "2025-03-03T00:00:00Z", "end": "2025-03-02T00:00:00Z"}, "before end"),
        ({"interval": "day", "start": "2025-03-01T00:00:00"}, "timezone"),
        ({"interval": "day", "start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00"}, "timezone"),
        ({"interval": "day", "start": "yesterday"}, "datetime"),
        (
            {"interval": "hour", "start": "2025-01-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"},
            "at most 1000",
        ),
        ({"interval": "day", "start": "2019-12-01T00:00:00Z"}, "not be before 2020-01-01"),
        ({"interval": "day", "purchase_id": "x"}, "Extra inputs are not permitted"),
        ({"interval": "day", "format": "xml"}, "'json' or 'csv'"),
        ({"interval": "day", "group_by": "unit"}, "'meter'"),
        ({"interval": 1}, "'hour', 'day', 'week' or 'month'"),
        (None, "Field required"),
    ],
)
def test_invalid_ranges_and_bodies_are_422_and_change_nothing(
    body: dict[str, Any] | None, detail: str, purchase: tuple[UUID, str, str], db: psycopg.Connection[Any]
) -> None:
    purchase_id, customer_key, _ = purchase
    before = assert_ledger_invariants(db, purchase_id)
    response = _call(purchase_id, customer_key, body)

    assert response["statusCode"] == 422, response
    assert response["headers"]["Content-Type"] == "application/problem+json"
    problem = json.loads(response["body"])
    assert problem["status"] == 422 and problem["errors"]
    assert any(detail in issue["msg"] for issue in problem["errors"]), problem["errors"]
    assert assert_ledger_invariants(db, purchase_id) == before


def test_unknown_purchase_and_wrong_key_get_the_same_401(purchase: tuple[UUID, str, str]) -> None:
    purchase_id, customer_key, vendor_key = purchase
    body = {"interval": "day"}
    answers = [
        _call(purchase_id, vendor_key, body),  # the vendor key is not the customer key
        _call(purchase_id, "ck_" + "0" * 43, body),
        _call(uuid4(), customer_key, body),
        _call("not-a-purchase", customer_key, body),
    ]
    assert _call(purchase_id, customer_key, body)["statusCode"] == 200
    for answer in answers:
        assert answer["statusCode"] == 401, answer
        assert answer["headers"]["Content-Type"] == "application/problem+json"
    assert len({answer["body"] for answer in answers}) == 1


@pytest.mark.parametrize("interval", list(BillingInterval))
def test_buckets_are_utc_whatever_the_session_time_zone(
    interval: BillingInterval, purchase: tuple[UUID, str, str], database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Across the US daylight-saving change and a leap day: the SQL grid is the rules' grid, in UTC."""
    purchase_id, _, _ = purchase
    period = BillingPeriod(interval, utc(2024, 2, 27, 5, 17), utc(2024, 3, 12, 1))
    if interval is BillingInterval.HOUR:
        period = BillingPeriod(interval, utc(2024, 3, 10, 5, 17), utc(2024, 3, 10, 9))
    if interval is BillingInterval.MONTH:
        period = BillingPeriod(interval, utc(2024, 1, 31, 23), utc(2025, 3, 1))
    in_utc = PostgresHistoryStore(db).ledger_history(purchase_id, period, by_meter=True)
    with psycopg.connect(database_url, autocommit=True) as new_york:
        new_york.execute("SET TIME ZONE 'America/New_York'")
        elsewhere = PostgresHistoryStore(new_york).ledger_history(purchase_id, period, by_meter=True)
    assert elsewhere == in_utc
    first = bucket_start(interval, period.start)
    expected = [
        shift_buckets(interval, first, index)
        for index in range(bucket_count(interval, period.start, period.end))
    ]
    assert [bucket.start for bucket in in_utc.buckets] == expected
    assert all(bucket.start.utcoffset() == timedelta(0) for bucket in in_utc.buckets)


def test_the_report_reads_the_history_index_and_the_probe_keeps_the_unique_one(
    purchase: tuple[UUID, str, str], db: psycopg.Connection[Any]
) -> None:
    purchase_id, _, _ = purchase
    service = ledger_on(db)
    for index in range(300):
        service.apply(ledger.debit(purchase_id, 1, f"d-{index}"))
    db.execute("ANALYZE ledger_entries")
    (probe,) = db.execute(
        """EXPLAIN (FORMAT JSON) SELECT 1 FROM ledger_entries
            WHERE purchase_id = %s AND idempotency_key = %s""",
        (purchase_id, "d-7"),
    ).fetchone() or (None,)
    assert "ledger_entries_idempotency" in json.dumps(probe)
    assert "ledger_entries_history" not in json.dumps(probe)
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        (plan,) = db.execute(
            "EXPLAIN (FORMAT JSON) " + report_statement(BillingInterval.DAY),
            {"purchase_id": purchase_id, "start": utc(2025, 2, 1), "end": utc(2025, 3, 1), "by_meter": True},
        ).fetchone() or (None,)
    assert "ledger_entries_history" in json.dumps(plan)


def test_answers_match_the_committed_openapi_document(purchase: tuple[UUID, str, str]) -> None:
    purchase_id, customer_key, _ = purchase
    operation = load_openapi_document()["paths"]["/purchase/{purchase_id}/historical-billing"]["post"]
    assert operation["operationId"] == "getHistoricalBilling"
    documented = operation["responses"]["200"]["content"]
    schema = {**documented["application/json"]["schema"], "components": load_openapi_document()["components"]}
    start, end, _ = RANGES["day"]
    for group_by in (None, "meter"):
        report = _report(
            purchase_id, customer_key, {"interval": "day", "start": start, "end": end, "group_by": group_by}
        )
        errors = [error.message for error in Draft202012Validator(schema).iter_errors(report)]
        assert not errors
    assert "text/csv" in documented
    assert set(operation["responses"]) >= {"200", "400", "401", "422", "503"}
