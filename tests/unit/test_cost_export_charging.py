"""Charging rules of the cost export: price per key, the posting that settles it, its key."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.cost_export import ChargeKind, Delivery, ExportFormat, UnattributedCost
from billing.domain.cost_export_charging import (
    RESTATEMENT_REASON,
    ChargeChange,
    charge_idempotency_key,
    merge_unattributed,
    plain_decimal,
    settle_change,
    unattributed_document,
    vendor_price_nano,
)
from billing.domain.ledger import MAX_IDEMPOTENCY_KEY_LENGTH, EntryKind

PURCHASE = UUID("00000000-0000-4000-8000-0000000000aa")
DELIVERY = Delivery(
    format=ExportFormat.CUR2,
    report_name="officex-cur2",
    billing_period=date(2025, 11, 1),
    delivery_id="exec-1",
    delivered_at=datetime(2025, 11, 5, tzinfo=UTC),
    bucket="reports",
    manifest_key="exports/officex-cur2/metadata/BILLING_PERIOD=2025-11/officex-cur2-Manifest.json",
    data_keys=("exports/officex-cur2/data/BILLING_PERIOD=2025-11/officex-cur2-00001.csv.gz",),
)


def change(cost: str, billed_nano: int, billed_cost: str | None = None) -> ChargeChange:
    return ChargeChange(
        purchase_id=PURCHASE,
        offer_id="s3-bucket",
        bucket="bucket-a",
        usage_day=date(2025, 11, 3),
        kind=ChargeKind.STORAGE,
        cost=Decimal(cost),
        billed_cost=Decimal(billed_cost) if billed_cost is not None else None,
        billed_nano=billed_nano,
    )


@pytest.mark.parametrize(
    ("cost", "markup", "nano"),
    [
        ("0.0000000004", "1.25", 0),  # 0.5 nano: half-even rounds to 0
        ("0.0000000012", "1.25", 2),  # 1.5 nano: half-even rounds to 2
        ("0.0312345678901", "1.25", 39_043_210),
        ("-0.05", "1.25", -62_500_000),  # a net credit lowers the price
        ("1.5E-1", "1", 150_000_000),
    ],
)
def test_vendor_price_is_cost_times_markup_rounded_once(cost: str, markup: str, nano: int) -> None:
    assert vendor_price_nano(Decimal(cost), Decimal(markup)) == nano


def test_a_new_key_is_a_usage_debit_of_its_whole_price() -> None:
    operation, record, diff = settle_change(change("1.2", 0), Decimal("1.25"), DELIVERY)

    assert diff == 1_500_000_000
    assert operation is not None
    assert operation.kind is EntryKind.USAGE
    assert operation.amount_nano == -1_500_000_000
    assert operation.required_available_nano is None  # usage already happened: never refused
    assert operation.meter == "s3:storage"
    assert operation.source == "cost-export"
    assert operation.metadata["aws_cost"] == "1.2"
    assert operation.metadata["delivery_id"] == "exec-1"
    assert (record.billed_cost, record.billed_nano) == (Decimal("1.2"), 1_500_000_000)


def test_a_lower_restatement_is_a_positive_adjustment_for_the_difference() -> None:
    operation, record, diff = settle_change(change("0.4", 1_500_000_000, "1.2"), Decimal("1.25"), DELIVERY)

    assert diff == -1_000_000_000
    assert operation is not None
    assert operation.kind is EntryKind.ADJUSTMENT
    assert operation.amount_nano == 1_000_000_000
    assert operation.metadata["reason"] == RESTATEMENT_REASON
    assert operation.metadata["aws_cost_billed_before"] == "1.2"
    assert record.billed_nano == 500_000_000


def test_a_cost_change_below_a_nano_posts_nothing_but_is_recorded() -> None:
    operation, record, diff = settle_change(
        change("1.2000000000001", 1_500_000_000, "1.2"), Decimal("1.25"), DELIVERY
    )

    assert (operation, diff) == (None, 0)
    assert record.billed_cost == Decimal("1.2000000000001")


@given(st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1, max_size=6))
def test_any_sequence_of_restatements_sums_to_the_last_price(costs_pico: list[int]) -> None:
    billed_nano, billed_cost = 0, None
    posted = 0
    for pico in costs_pico:
        cost = Decimal(pico).scaleb(-12)
        operation, record, diff = settle_change(
            change(str(cost), billed_nano, str(billed_cost) if billed_cost is not None else None),
            Decimal("1.25"),
            DELIVERY,
        )
        posted += -operation.amount_nano if operation is not None else 0
        assert diff == (-operation.amount_nano if operation is not None else 0)
        billed_nano, billed_cost = record.billed_nano, record.billed_cost
    assert posted == vendor_price_nano(Decimal(costs_pico[-1]).scaleb(-12), Decimal("1.25"))


def test_the_idempotency_key_names_the_delivery_and_the_charge() -> None:
    key = charge_idempotency_key(DELIVERY, "bucket-a", date(2025, 11, 3), ChargeKind.DATA_TRANSFER)

    assert key == "cost-export:officex-cur2:2025-11:exec-1:bucket-a:2025-11-03:data_transfer"


def test_long_idempotency_keys_are_hashed_deterministically_and_stay_distinct() -> None:
    long = Delivery(**{**DELIVERY.__dict__, "report_name": "r" * 120, "delivery_id": "d" * 90})
    first = charge_idempotency_key(long, "b" * 63, date(2025, 11, 3), ChargeKind.STORAGE)
    second = charge_idempotency_key(long, "b" * 63, date(2025, 11, 4), ChargeKind.STORAGE)

    assert len(first) <= MAX_IDEMPOTENCY_KEY_LENGTH and len(second) <= MAX_IDEMPOTENCY_KEY_LENGTH
    assert first != second
    assert first == charge_idempotency_key(long, "b" * 63, date(2025, 11, 3), ChargeKind.STORAGE)
    assert first.startswith("cost-export:rrrr")


def test_the_unattributed_summary_merges_per_reason_and_product() -> None:
    merged = merge_unattributed(
        [UnattributedCost("not_s3", "AmazonEC2", Decimal("1.5"), 3)],
        [
            UnattributedCost("unknown_bucket", "AmazonS3", Decimal("0.250000000000000000"), 2),
            UnattributedCost("not_s3", "AmazonEC2", Decimal("2"), 1),
        ],
    )

    assert merged == [
        UnattributedCost("not_s3", "AmazonEC2", Decimal("3.5"), 4),
        UnattributedCost("unknown_bucket", "AmazonS3", Decimal("0.250000000000000000"), 2),
    ]
    assert unattributed_document(merged, [("stranger", Decimal("0.25"))]) == [
        {"reason": "not_s3", "product": "AmazonEC2", "cost": "3.5", "rows": 4},
        {
            "reason": "unknown_bucket",
            "product": "AmazonS3",
            "cost": "0.25",
            "rows": 2,
            "top_buckets": [{"bucket": "stranger", "cost": "0.25"}],
        },
    ]


@pytest.mark.parametrize(
    ("value", "text"), [("0.250000000000000000", "0.25"), ("1E+2", "100"), ("-0.000", "0"), ("12", "12")]
)
def test_plain_decimal(value: str, text: str) -> None:
    assert plain_decimal(Decimal(value)) == text
