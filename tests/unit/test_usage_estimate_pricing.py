"""Pricing S3 usage estimates from CloudWatch metrics (pure): units, mapping, rounding, windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest

from billing.domain.catalog import S3Pricing
from billing.domain.cost_export import ChargeKind
from billing.domain.ledger import MAX_IDEMPOTENCY_KEY_LENGTH, EntryKind
from billing.domain.money import round_usd_to_nano
from billing.domain.usage_estimates import (
    BYTES_PER_GIB,
    BucketRef,
    DayUsage,
    SettledEstimate,
    days_to_estimate,
    estimate_idempotency_key,
    estimate_operation,
    estimate_posting_nano,
    price_day,
    reversal_operation,
    window_end_of,
)

PRICING = S3Pricing.model_validate(
    {
        "meter": "s3_cost_export",
        "prices_as_of": "2025-10-01",
        "markup": "1.25",
        "region": "us-east-1",
        "unit_prices": {
            "storage_gb_month": {"STANDARD": "0.023", "STANDARD_IA": "0.0125"},
            "put_per_1k": "0.005",
            "get_per_1k": "0.0004",
            "transfer_out_per_gb": "0.09",
        },
    }
)
GIB = BYTES_PER_GIB
NOV_5 = date(2025, 11, 5)  # November: 30 days


def by_kind(usage: DayUsage, day: date = NOV_5) -> dict[ChargeKind, int]:
    return {item.kind: item.price_nano for item in price_day(usage, day, PRICING)}


def test_no_datapoints_no_estimate() -> None:
    assert price_day(DayUsage(), NOV_5, PRICING) == []


def test_storage_is_the_gb_month_price_pro_rated_per_day_of_that_month() -> None:
    usage = DayUsage(storage_bytes={"StandardStorage": 30 * GIB, "StandardIAStorage": 60 * GIB})
    expected = round_usd_to_nano((30 * Decimal("0.023") + 60 * Decimal("0.0125")) / 30 * Decimal("1.25"))
    assert by_kind(usage) == {ChargeKind.STORAGE: expected}
    # February has 28 days in 2025: the same size costs more per day.
    february = by_kind(DayUsage(storage_bytes={"StandardStorage": 28 * GIB}), date(2025, 2, 10))
    assert february[ChargeKind.STORAGE] == round_usd_to_nano(Decimal("0.023") * Decimal("1.25"))


def test_a_storage_class_without_a_price_uses_standard() -> None:
    glacier = by_kind(DayUsage(storage_bytes={"DeepArchiveStorage": 30 * GIB}))
    standard = by_kind(DayUsage(storage_bytes={"StandardStorage": 30 * GIB}))
    assert glacier == standard


def test_requests_get_at_the_get_price_put_and_every_other_request_at_the_put_price() -> None:
    usage = DayUsage(all_requests=Decimal(13_000), get_requests=Decimal(10_000), put_requests=Decimal(2_000))
    # 10,000 GET × 0.0004/1k + (2,000 PUT + 1,000 other) × 0.005/1k = 0.004 + 0.015
    assert by_kind(usage) == {ChargeKind.REQUESTS: round_usd_to_nano(Decimal("0.019") * Decimal("1.25"))}
    only_all = DayUsage(all_requests=Decimal(1_000))
    assert by_kind(only_all) == {ChargeKind.REQUESTS: round_usd_to_nano(Decimal("0.005") * Decimal("1.25"))}


def test_transfer_is_every_downloaded_byte_at_the_internet_price_rounded_once() -> None:
    usage = DayUsage(bytes_downloaded=Decimal(1))  # one byte: 0.09 / 2^30 × 1.25 ≈ 0.000000000105 USD
    assert by_kind(usage) == {ChargeKind.DATA_TRANSFER: 0}
    assert by_kind(DayUsage(bytes_downloaded=7 * GIB)) == {
        ChargeKind.DATA_TRANSFER: round_usd_to_nano(7 * Decimal("0.09") * Decimal("1.25"))
    }


def test_only_the_rise_is_posted_and_estimates_never_go_down() -> None:
    assert estimate_posting_nano(0, 500) == 500
    assert estimate_posting_nano(500, 800) == 300
    assert estimate_posting_nano(800, 800) == 0
    assert estimate_posting_nano(800, 700) == 0


def test_window_end_floors_to_the_period_and_days_cover_the_lookback() -> None:
    now = datetime(2025, 11, 5, 10, 7, 31, tzinfo=UTC)
    end = window_end_of(now, timedelta(minutes=15))
    assert end == datetime(2025, 11, 5, 10, 0, tzinfo=UTC)
    assert days_to_estimate(end, 3) == [date(2025, 11, 3), date(2025, 11, 4), NOV_5]
    midnight = datetime(2025, 11, 5, 0, 0, tzinfo=UTC)  # the new day has not begun yet
    assert days_to_estimate(midnight, 2) == [date(2025, 11, 3), date(2025, 11, 4)]
    with pytest.raises(ValueError):
        window_end_of(datetime(2025, 11, 5, 10, 7), timedelta(minutes=15))


def test_the_posting_is_an_estimate_debit_keyed_by_bucket_day_kind_and_window() -> None:
    ref = BucketRef(purchase_id=UUID(int=7), offer_id="s3-bucket", bucket="b", region="us-east-1")
    (item,) = price_day(DayUsage(bytes_downloaded=GIB), NOV_5, PRICING)
    end = datetime(2025, 11, 5, 10, 0, tzinfo=UTC)
    operation = estimate_operation(ref, NOV_5, item, amount_nano=123, window_end=end, pricing=PRICING)
    assert operation.kind is EntryKind.ESTIMATE and operation.amount_nano == -123
    assert operation.required_available_nano is None  # usage that happened is never refused
    assert operation.idempotency_key == "estimate:b:2025-11-05:data_transfer:2025-11-05T10:00Z"
    long_key = estimate_idempotency_key("x" * 250, NOV_5, ChargeKind.STORAGE, end)
    assert len(long_key) <= MAX_IDEMPOTENCY_KEY_LENGTH
    assert long_key != estimate_idempotency_key(
        "x" * 250, NOV_5, ChargeKind.STORAGE, end + timedelta(minutes=15)
    )


def test_a_reversal_gives_back_the_whole_estimate_and_nothing_for_zero() -> None:
    settled = SettledEstimate(UUID(int=7), "b", NOV_5, ChargeKind.REQUESTS, 42)
    operation = reversal_operation(settled, 9)
    assert operation is not None
    assert operation.kind is EntryKind.REVERSAL and operation.amount_nano == 42
    assert operation.idempotency_key == "estimate-reversal:9:b:2025-11-05:requests"
    assert (
        reversal_operation(SettledEstimate(settled.purchase_id, "b", NOV_5, ChargeKind.REQUESTS, 0), 9)
        is None
    )
