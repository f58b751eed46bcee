"""Provisional S3 charges from CloudWatch on real Postgres + moto, and their reconciliation by the export.

Metric datapoints are injected into moto's CloudWatch with ``put_metric_data`` (timestamps in
the past, namespace ``AWS/S3``, the dimensions S3 uses); the estimator reads them through the
real ``CloudWatchUsageMetrics`` adapter. The cost export is fed to the real charging service
through an in-memory reader (as in test_cost_export_billing.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import boto3
import psycopg
import pytest
from moto import mock_aws

from billing.adapters.aws.cloudwatch_usage import CloudWatchUsageMetrics
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.cost_export import ChargeKind
from billing.domain.cost_export_charging import OutcomeStatus, vendor_price_nano
from billing.domain.purchase import Triggers
from billing.domain.usage_estimates import BucketRef, UsageReadout
from billing.services.usage_estimator import UsageEstimator
from tests.integration.ledger_support import assert_ledger_invariants
from tests.integration.test_cost_export_billing import (
    MARKUP,
    USD,
    FakeReader,
    billing_on,
    delivery,
    s3_offer,
    s3_purchase,
)
from vendorctl.cli import main as vendorctl_main

REGION = "us-east-1"
GIB = 1024**3
NOW = datetime(2025, 11, 5, 10, 7, tzinfo=UTC)  # window 09:45–10:00; lookback Nov 3–5
TRANSFER_OUT = Decimal("0.09")  # catalog/catalog.yaml, s3-bucket offer
STORAGE, REQUESTS, TRANSFER = ChargeKind.STORAGE, ChargeKind.REQUESTS, ChargeKind.DATA_TRANSFER
TRIGGERS = Triggers(low_nano=5 * USD, critical_nano=2 * USD, termination_nano=USD // 2)


def nov(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2025, 11, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name=REGION)


def put_request_metric(client: Any, bucket: str, metric: str, value: float, at: datetime) -> None:
    client.put_metric_data(
        Namespace="AWS/S3",
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [
                    {"Name": "BucketName", "Value": bucket},
                    {"Name": "FilterId", "Value": "EntireBucket"},
                ],
                "Timestamp": at,
                "Value": value,
                "Unit": "Bytes" if metric.startswith("Bytes") else "Count",
            }
        ],
    )


def put_storage_metric(
    client: Any, bucket: str, size_bytes: float, day: int, storage_type: str = "StandardStorage"
) -> None:
    client.put_metric_data(
        Namespace="AWS/S3",
        MetricData=[
            {
                "MetricName": "BucketSizeBytes",
                "Dimensions": [
                    {"Name": "BucketName", "Value": bucket},
                    {"Name": "StorageType", "Value": storage_type},
                ],
                "Timestamp": nov(day),
                "Value": size_bytes,
                "Unit": "Bytes",
            }
        ],
    )


def estimator_on(db: psycopg.Connection[Any], metrics: Any = None) -> UsageEstimator:
    return UsageEstimator(PostgresTransactions(lambda: db), metrics or CloudWatchUsageMetrics())


def estimate_entries(db: psycopg.Connection[Any], purchase_id: UUID) -> list[tuple[str, int]]:
    rows = db.execute(
        """SELECT idempotency_key, amount_nano FROM ledger_entries
            WHERE purchase_id = %s AND kind = 'estimate' ORDER BY id""",
        (purchase_id,),
    ).fetchall()
    return [(row[0], int(row[1])) for row in rows]


def usage_total(db: psycopg.Connection[Any], purchase_id: UUID) -> int:
    """What the customer paid for usage: every entry but deposits, as a positive amount."""
    (total,) = db.execute(
        """SELECT COALESCE(-sum(amount_nano), 0)::bigint FROM ledger_entries
            WHERE purchase_id = %s AND kind <> 'deposit'""",
        (purchase_id,),
    ).fetchone() or (None,)
    return int(total)


def transfer_price(gib: int) -> int:
    return vendor_price_nano(Decimal(gib) * TRANSFER_OUT, MARKUP)


@pytest.fixture
def offer(db: psycopg.Connection[Any]) -> None:
    s3_offer(db)


# ---------------------------------------------------------------------- tests
def test_estimated_usage_crossing_termination_suspends_within_one_run(
    db: psycopg.Connection[Any], cloudwatch: Any, offer: None
) -> None:
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=10, triggers=TRIGGERS)
    put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 100 * GIB, nov(5, 9, 30))

    outcome = estimator_on(db).run(NOW)

    assert outcome.keys_charged == 1 and outcome.charged_nano == transfer_price(100)
    assert transfer_price(100) > 10 * USD - TRIGGERS.termination_nano  # 11.25 USD against 10 deposited
    status, balance = db.execute(
        "SELECT status, balance_nano FROM purchases WHERE id = %s", (purchase_id,)
    ).fetchone() or (None, None)
    assert status == "suspended"
    assert balance == 10 * USD - transfer_price(100)
    kinds = {row[0] for row in db.execute("SELECT kind FROM outbox WHERE purchase_id = %s", (purchase_id,))}
    assert "resource.suspend" in kinds
    assert estimate_entries(db, purchase_id) == [
        ("estimate:bucket-a:2025-11-05:data_transfer:2025-11-05T10:00Z", -transfer_price(100))
    ]
    assert_ledger_invariants(db, purchase_id)


def test_two_runs_of_the_same_window_charge_once_and_a_later_window_catches_up(
    db: psycopg.Connection[Any], cloudwatch: Any, offer: None
) -> None:
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=100)
    put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 2 * GIB, nov(5, 9, 0))
    estimator = estimator_on(db)

    first = estimator.run(NOW)
    # A late datapoint of the same window: a rerun of the window still charges nothing …
    put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 3 * GIB, nov(5, 9, 50))
    second = estimator.run(NOW + timedelta(minutes=5))

    assert first.keys_charged == 1 and second.keys_charged == 0 and second.keys_already_estimated == 1
    assert [amount for _, amount in estimate_entries(db, purchase_id)] == [-transfer_price(2)]

    # … the next window's cumulative total includes it, and only the rise is posted.
    third = estimator.run(NOW + timedelta(minutes=15))
    assert third.charged_nano == transfer_price(5) - transfer_price(2)
    assert sum(amount for _, amount in estimate_entries(db, purchase_id)) == -transfer_price(5)
    (estimated,) = db.execute(
        "SELECT estimated_nano FROM usage_estimates WHERE purchase_id = %s AND charge_kind = 'data_transfer'",
        (purchase_id,),
    ).fetchone() or (None,)
    assert estimated == transfer_price(5)
    assert_ledger_invariants(db, purchase_id)


def test_missing_metrics_charge_nothing_and_late_storage_is_caught_up(
    db: psycopg.Connection[Any], cloudwatch: Any, offer: None
) -> None:
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=100)
    estimator = estimator_on(db)

    empty = estimator.run(NOW)
    assert empty.buckets == 1 and empty.keys_charged == 0 and empty.buckets_unreadable == 0
    assert estimate_entries(db, purchase_id) == []
    assert db.execute("SELECT count(*) FROM usage_estimates").fetchone() == (0,)

    # Storage metrics arrive a day or two late: day 3's size shows up after day 3.
    put_storage_metric(cloudwatch, "bucket-a", 30 * GIB, day=3)
    later = estimator.run(NOW + timedelta(hours=1))
    expected = vendor_price_nano(Decimal(30) * Decimal("0.023") / 30, MARKUP)  # 30 GiB × 0.023 / 30 days
    assert later.keys_charged == 1 and later.charged_nano == expected
    assert estimate_entries(db, purchase_id)[0][0].startswith("estimate:bucket-a:2025-11-03:storage:")
    assert_ledger_invariants(db, purchase_id)


class FailingMetrics:
    """CloudWatch throttling every call: the adapter's failure shape, without a network."""

    def read_usage(self, buckets: Any, first_day: date, window_end: datetime) -> UsageReadout:
        return UsageReadout(failed={ref.bucket: "CloudWatch answered Throttling" for ref in buckets})


def test_unreadable_metrics_charge_nothing_and_do_not_crash(db: psycopg.Connection[Any], offer: None) -> None:
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=100)
    outcome = estimator_on(db, FailingMetrics()).run(NOW)
    assert outcome.buckets_unreadable == 1 and outcome.keys_charged == 0
    assert estimate_entries(db, purchase_id) == []


def test_cloudwatch_errors_become_unreadable_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    metrics = CloudWatchUsageMetrics(connect_timeout_s=0.2, read_timeout_s=0.2, max_attempts=1)
    ref = BucketRef(UUID(int=1), "s3-bucket", "bucket-x", REGION)
    readout = metrics.read_usage([ref], date(2025, 11, 3), NOW)
    assert set(readout.failed) == {"bucket-x"} and readout.usage == {}


def test_the_export_replaces_every_estimate_and_the_total_equals_the_export(
    db: psycopg.Connection[Any], cloudwatch: Any, offer: None
) -> None:
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=100)
    # Days 3–5 estimated: storage, requests and transfer.
    for day_number in (3, 4, 5):
        put_storage_metric(cloudwatch, "bucket-a", 50 * GIB, day=day_number)
        put_request_metric(cloudwatch, "bucket-a", "GetRequests", 10_000, nov(day_number, 8))
        put_request_metric(cloudwatch, "bucket-a", "PutRequests", 2_000, nov(day_number, 8))
        put_request_metric(cloudwatch, "bucket-a", "AllRequests", 12_500, nov(day_number, 8))
        put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 7 * GIB, nov(day_number, 8))
    estimator = estimator_on(db)
    first = estimator.run(NOW)
    assert first.keys_charged == 9
    assert len(estimate_entries(db, purchase_id)) == 9

    # The export bills days 3 and 4 (not 5), with costs of its own; day 4 has no requests line.
    export_costs = {
        ("bucket-a", 3, STORAGE): Decimal("0.0383333333333"),
        ("bucket-a", 3, REQUESTS): Decimal("0.0140000001"),
        ("bucket-a", 3, TRANSFER): Decimal("0.4500000007"),
        ("bucket-a", 4, STORAGE): Decimal("0.0383333333339"),
        ("bucket-a", 4, TRANSFER): Decimal("0.0000000013"),
    }
    reader = FakeReader()
    reader.add(delivery(1), export_costs)
    outcome = billing_on(db, reader).process(delivery(1))
    assert outcome.status is OutcomeStatus.APPLIED
    day5_estimate = db.execute(
        "SELECT COALESCE(sum(estimated_nano), 0)::bigint FROM usage_estimates WHERE usage_day = '2025-11-05'"
    ).fetchone()
    assert day5_estimate is not None and day5_estimate[0] > 0
    estimated_days_3_4 = db.execute(
        "SELECT sum(estimated_nano)::bigint FROM usage_estimates WHERE usage_day < '2025-11-05'"
    ).fetchone()
    assert estimated_days_3_4 is not None and outcome.estimates_reversed_nano == estimated_days_3_4[0]

    export_nano = sum(vendor_price_nano(cost, MARKUP) for cost in export_costs.values())
    # Only day 5's estimate stays; days 3 and 4 are exactly the export's price.
    assert usage_total(db, purchase_id) == export_nano + day5_estimate[0]

    # Later estimator windows never estimate days the export billed again.
    put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 9 * GIB, nov(4, 20))
    later = estimator.run(NOW + timedelta(minutes=15))
    assert later.keys_charged == 0 and later.keys_billed_by_export == 6
    assert usage_total(db, purchase_id) == export_nano + day5_estimate[0]

    # The next delivery covers day 5 too: every estimate is replaced, the total is the export's.
    export_costs[("bucket-a", 5, TRANSFER)] = Decimal("0.61")
    reader.add(delivery(2), export_costs)
    assert billing_on(db, reader).process(delivery(2)).status is OutcomeStatus.APPLIED
    export_nano = sum(vendor_price_nano(cost, MARKUP) for cost in export_costs.values())
    assert usage_total(db, purchase_id) == export_nano
    assert db.execute("SELECT count(*) FROM usage_estimates WHERE settled_at IS NULL").fetchone() == (0,)
    # A replay of the delivery reverses nothing twice.
    assert billing_on(db, reader).process(delivery(2)).status is OutcomeStatus.ALREADY_APPLIED
    assert usage_total(db, purchase_id) == export_nano
    assert_ledger_invariants(db, purchase_id)


def test_a_day_the_export_never_covers_keeps_its_estimate_and_is_reported(
    db: psycopg.Connection[Any], database_url: str, cloudwatch: Any, offer: None
) -> None:
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=100)
    put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 4 * GIB, nov(3, 12))
    put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 6 * GIB, nov(4, 12))
    estimator_on(db).run(NOW)
    reader = FakeReader()
    reader.add(delivery(1), {("bucket-a", 4, ChargeKind.DATA_TRANSFER): Decimal("0.54")})
    billing_on(db, reader).process(delivery(1))

    report = PostgresTransactions(lambda: db).run(lambda unit: unit.usage_estimates.unsettled())
    assert [(item.purchase_id, item.usage_day, item.kind, item.estimated_nano) for item in report] == [
        (purchase_id, date(2025, 11, 3), ChargeKind.DATA_TRANSFER, transfer_price(4))
    ]
    assert usage_total(db, purchase_id) == transfer_price(4) + vendor_price_nano(Decimal("0.54"), MARKUP)
    assert_ledger_invariants(db, purchase_id)
    out = io.StringIO()
    assert vendorctl_main(["--database-url", database_url, "estimates", "unsettled"], out=out) == 0
    (line, summary) = out.getvalue().splitlines()
    assert "2025-11-03" in line and "bucket-a" in line and "data_transfer" in line
    assert summary.startswith("1 unsettled estimate(s)")


def test_an_estimate_beside_an_existing_bill_is_reversed_by_the_estimator(
    db: psycopg.Connection[Any], cloudwatch: Any, offer: None
) -> None:
    """A race the locks cannot see (an estimate row new to a day the export was billing): self-healed."""
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=100)
    put_request_metric(cloudwatch, "bucket-a", "BytesDownloaded", 4 * GIB, nov(4, 12))
    estimator = estimator_on(db)
    estimator.run(NOW)
    # The export's charge row appears without having settled the estimate (as if it raced).
    db.execute(
        """INSERT INTO cost_export_deliveries (report_name, format, billing_period, delivery_id, delivered_at,
                                               manifest_bucket, manifest_key, status)
           VALUES ('r', 'legacy_cur', '2025-11-01', 'x', now(), 'b', 'k', 'applied')"""
    )
    db.execute(
        """INSERT INTO cost_export_charges (purchase_id, bucket, usage_day, charge_kind, billed_cost,
                                            billed_nano, report_name, billing_period, last_delivery_id)
           VALUES (%s, 'bucket-a', '2025-11-04', 'storage', 0, 0, 'r', '2025-11-01',
                   (SELECT id FROM cost_export_deliveries WHERE delivery_id = 'x'))""",
        (purchase_id,),
    )
    outcome = estimator.run(NOW + timedelta(minutes=15))
    assert outcome.keys_billed_by_export == 1 and outcome.estimates_reversed_nano == transfer_price(4)
    assert usage_total(db, purchase_id) == 0
    assert_ledger_invariants(db, purchase_id)
