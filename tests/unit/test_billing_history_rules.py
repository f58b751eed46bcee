"""Historical billing rules: the UTC grid, the range bounds, carrying balances, and the CSV form."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest
from pydantic import ValidationError

from billing.api.billing_history_models import CSV_COLUMNS, HistoricalBillingBody, render_csv
from billing.domain.billing_history import (
    MAX_BUCKETS,
    BillingInterval,
    BillingPeriod,
    BucketActivity,
    InvalidBillingRange,
    LedgerHistory,
    MeterUsage,
    bucket_count,
    bucket_start,
    build_report,
    resolve_period,
    shift_buckets,
)

HOUR, DAY, WEEK, MONTH = (
    BillingInterval.HOUR,
    BillingInterval.DAY,
    BillingInterval.WEEK,
    BillingInterval.MONTH,
)
NOW = datetime(2025, 3, 12, 15, 42, 7, 123456, tzinfo=UTC)  # a Wednesday


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("interval", "at", "expected"),
    [
        (HOUR, utc(2025, 3, 12, 15, 42), utc(2025, 3, 12, 15)),
        (DAY, utc(2025, 3, 12, 23, 59, 59, 999999), utc(2025, 3, 12)),
        (DAY, utc(2025, 3, 13), utc(2025, 3, 13)),
        (WEEK, utc(2025, 3, 12, 15), utc(2025, 3, 10)),  # Wednesday → Monday
        (WEEK, utc(2025, 3, 16, 23, 59), utc(2025, 3, 10)),  # Sunday night is still that week
        (WEEK, utc(2025, 3, 17), utc(2025, 3, 17)),
        (WEEK, utc(1999, 12, 31), utc(1999, 12, 27)),  # before the grid origin
        (MONTH, utc(2024, 2, 29, 23, 59), utc(2024, 2, 1)),
    ],
)
def test_buckets_are_aligned_in_utc(interval: BillingInterval, at: datetime, expected: datetime) -> None:
    assert bucket_start(interval, at) == expected


def test_bucket_of_an_offset_time_is_the_utc_bucket() -> None:
    # 00:30 in Berlin on the 1st is 23:30 UTC on the last day of the previous month.
    berlin = datetime(2025, 4, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert bucket_start(DAY, berlin) == utc(2025, 3, 31)
    assert bucket_start(MONTH, berlin) == utc(2025, 3, 1)


def test_bucket_counts_and_shifts() -> None:
    assert bucket_count(DAY, utc(2025, 3, 1), utc(2025, 3, 2)) == 1
    assert bucket_count(DAY, utc(2025, 3, 1, 12), utc(2025, 3, 2, 0, 0, 0, 1)) == 2
    assert bucket_count(HOUR, utc(2025, 3, 1), utc(2025, 3, 2)) == 24
    assert bucket_count(WEEK, utc(2025, 3, 9), utc(2025, 3, 11)) == 2  # Sunday into Monday
    assert bucket_count(MONTH, utc(2024, 11, 15), utc(2025, 2, 1)) == 3
    assert shift_buckets(MONTH, utc(2025, 1, 1), -13) == utc(2023, 12, 1)
    assert shift_buckets(MONTH, utc(2025, 11, 1), 2) == utc(2026, 1, 1)
    assert shift_buckets(WEEK, utc(2025, 3, 10), -1) == utc(2025, 3, 3)


@pytest.mark.parametrize(
    ("interval", "first_start", "count"),
    [
        (HOUR, utc(2025, 3, 11, 16), 24),
        (DAY, utc(2025, 2, 11), 30),
        (WEEK, utc(2024, 12, 23), 12),
        (MONTH, utc(2024, 4, 1), 12),
    ],
)
def test_default_range_is_whole_buckets_up_to_now(
    interval: BillingInterval, first_start: datetime, count: int
) -> None:
    period = resolve_period(interval, None, None, NOW)
    assert (period.start, period.end, period.bucket_count) == (first_start, NOW, count)


def test_default_start_counts_back_from_a_given_end_and_stops_at_2020() -> None:
    period = resolve_period(DAY, None, utc(2025, 1, 1), NOW)  # end on a boundary: 30 whole days before it
    assert (period.start, period.bucket_count) == (utc(2024, 12, 2), 30)
    early = resolve_period(MONTH, None, utc(2020, 3, 5), NOW)
    assert (early.start, early.bucket_count) == (utc(2020, 1, 1), 3)


def test_given_times_are_kept_exactly_in_utc() -> None:
    start = datetime(2025, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    period = resolve_period(HOUR, start, utc(2025, 3, 1, 2, 30), NOW)
    assert (period.start, period.end, period.bucket_count) == (utc(2025, 3, 1), utc(2025, 3, 1, 2, 30), 3)


@pytest.mark.parametrize(
    ("interval", "start", "end", "message"),
    [
        (DAY, utc(2025, 3, 2), utc(2025, 3, 2), "start must be before end"),
        (DAY, utc(2025, 3, 3), utc(2025, 3, 2), "start must be before end"),
        (DAY, NOW + timedelta(hours=1), None, "start must be before end"),
        (DAY, datetime(2025, 3, 1), None, "must carry a time zone"),
        (DAY, utc(2019, 12, 31), utc(2020, 2, 1), "not be before 2020-01-01"),
        (DAY, None, utc(2019, 6, 1), "end must be after 2020-01-01"),
        (DAY, None, NOW + timedelta(days=400), "at most 366 days ahead"),
        (DAY, datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), None, "not be before 2020-01-01"),
        (DAY, None, datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), "366 days ahead"),
        (HOUR, utc(2025, 1, 1), utc(2025, 3, 1), f"1416 hour buckets; at most {MAX_BUCKETS}"),
        (DAY, utc(2020, 1, 1), utc(2025, 1, 1), "at most 1000 per request"),
    ],
)
def test_ranges_out_of_bounds_are_refused(
    interval: BillingInterval, start: datetime | None, end: datetime | None, message: str
) -> None:
    with pytest.raises(InvalidBillingRange, match=message):
        resolve_period(interval, start, end, NOW)


def test_the_bucket_cap_is_inclusive() -> None:
    start = utc(2025, 1, 1)
    assert resolve_period(HOUR, start, start + timedelta(hours=MAX_BUCKETS), NOW).bucket_count == MAX_BUCKETS
    with pytest.raises(InvalidBillingRange):
        resolve_period(HOUR, start, start + timedelta(hours=MAX_BUCKETS, microseconds=1), NOW)


@pytest.mark.parametrize(
    "body",
    [
        {"interval": "minute"},
        {"interval": "day", "format": "xml"},
        {"interval": "day", "group_by": "model"},
        {"interval": "day", "start": "2025-03-01T00:00:00"},  # no time zone
        {"interval": "day", "start": "2025-03-02T00:00:00Z", "end": "2025-03-01T00:00:00Z"},
        {"interval": "day", "currency": "EUR"},
        {},
    ],
)
def test_request_bodies_out_of_contract_fail_validation(body: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        HistoricalBillingBody.model_validate(body)


def _activity(
    day: int,
    *,
    usage: int = 0,
    deposits: int = 0,
    adjustments: int = 0,
    last: int | None = None,
    meters: tuple[MeterUsage, ...] = (),
) -> BucketActivity:
    """One day of March 2025 as the store would sum it."""
    entries = sum(1 for amount in (usage, deposits, adjustments) if amount)
    return BucketActivity(
        utc(2025, 3, day), utc(2025, 3, day + 1), entries, usage, deposits, adjustments, last, meters
    )


def test_balances_carry_through_empty_buckets_and_totals_add_up() -> None:
    period = BillingPeriod(DAY, utc(2025, 3, 1, 12), utc(2025, 3, 4, 6))
    gemini = MeterUsage("gemini:pro", "tokens", Decimal("1200"), 300)
    history = LedgerHistory(
        opening_balance_nano=1_000,
        buckets=[
            _activity(1, deposits=5_000, usage=300, last=5_700, meters=(gemini,)),
            _activity(2),
            _activity(
                3, adjustments=-200, usage=700, last=4_800, meters=(gemini, MeterUsage(None, None, None, 400))
            ),
            _activity(4),
        ],
    )
    report = build_report(uuid4(), period, history, by_meter=True)
    assert [(bucket.start, bucket.end) for bucket in report.buckets] == [
        (utc(2025, 3, 1, 12), utc(2025, 3, 2)),  # clipped to the range
        (utc(2025, 3, 2), utc(2025, 3, 3)),
        (utc(2025, 3, 3), utc(2025, 3, 4)),
        (utc(2025, 3, 4), utc(2025, 3, 4, 6)),  # clipped to the range
    ]
    assert [(bucket.opening_balance_nano, bucket.closing_balance_nano) for bucket in report.buckets] == [
        (1_000, 5_700),
        (5_700, 5_700),
        (5_700, 4_800),
        (4_800, 4_800),
    ]
    for bucket in [*report.buckets, report.totals]:
        assert (
            bucket.opening_balance_nano
            + bucket.deposits_nano
            - bucket.usage_cost_nano
            + bucket.adjustments_nano
            == bucket.closing_balance_nano
        )
    totals = report.totals
    assert (totals.start, totals.end) == (period.start, period.end)
    assert (totals.usage_cost_nano, totals.deposits_nano, totals.adjustments_nano) == (1_000, 5_000, -200)
    assert totals.usage == (
        MeterUsage("gemini:pro", "tokens", Decimal("2400"), 600),
        MeterUsage(None, None, None, 400),
    )


def test_a_store_grid_that_disagrees_with_the_rules_is_a_bug() -> None:
    period = BillingPeriod(DAY, utc(2025, 3, 1), utc(2025, 3, 3))
    with pytest.raises(RuntimeError, match="grid has 2"):
        build_report(uuid4(), period, LedgerHistory(0, [_activity(1)]), by_meter=False)


def test_csv_has_a_row_per_bucket_and_meter_and_guards_formulas() -> None:
    period = BillingPeriod(DAY, utc(2025, 3, 1), utc(2025, 3, 3))
    sneaky = MeterUsage("explicit", "=HYPERLINK(1)", Decimal("0.5"), 1)
    history = LedgerHistory(
        0, [_activity(1, deposits=10**9, usage=1, last=10**9 - 1, meters=(sneaky,)), _activity(2)]
    )
    text = render_csv(build_report(uuid4(), period, history, by_meter=True))
    assert text.endswith("\r\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["row_type"] for row in rows] == ["bucket", "bucket_meter", "bucket", "total", "total_meter"]
    assert rows[0]["deposits"] == "1.000000000" and rows[0]["closing_balance"] == "0.999999999"
    assert rows[1]["unit"] == "'=HYPERLINK(1)" and rows[1]["quantity"] == "0.5"
    assert rows[1]["usage_cost"] == "0.000000001" and rows[1]["deposits"] == ""
    assert rows[3]["start"] == "2025-03-01T00:00:00Z" and rows[3]["end"] == "2025-03-03T00:00:00Z"
