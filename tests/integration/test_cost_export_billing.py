"""Charging cost-export deliveries on real Postgres: restatements, ordering, replays, failures.

Deliveries are fed to the service as ``ParsedDelivery`` objects by an in-memory reader
(the DuckDB reader is tested on files separately); everything from staging to the
ledger is the production code on a real database.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest

from billing.adapters.postgres.catalog_store import PostgresCatalogStore
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.cost_export import (
    BucketDayCost,
    ChargeKey,
    ChargeKind,
    Delivery,
    DeliveryRejected,
    ExportFormat,
    ParsedDelivery,
    UnattributedCost,
)
from billing.domain.cost_export_charging import OutcomeStatus, vendor_price_nano
from billing.domain.purchase import Triggers
from billing.services.cost_export import CostExportBilling
from tests.conftest import REPO_ROOT
from tests.integration.ledger_support import (
    assert_ledger_invariants,
    ledger_on,
    new_purchase,
    run_concurrently,
)
from vendorctl.cli import read_catalog_file

USD = 10**9
MARKUP = Decimal("1.25")  # the s3-bucket offer of catalog/catalog.yaml
PERIOD = date(2025, 11, 1)
REPORT = "officex-cur"
S, R, T = ChargeKind.STORAGE, ChargeKind.REQUESTS, ChargeKind.DATA_TRANSFER
BASE = {S: Decimal("0.0312345678901"), R: Decimal("0.00000043"), T: Decimal("0.09000000033")}

Costs = dict[tuple[str, int, ChargeKind], Decimal | list[Decimal]]


# ------------------------------------------------------------------ helpers
def day(number: int) -> date:
    return PERIOD.replace(day=number)


def delivery(number: int, *, delivered_day: int | None = None, report: str = REPORT) -> Delivery:
    assembly = f"00000000-0000-4000-8000-{number:012d}"
    return Delivery(
        format=ExportFormat.LEGACY_CUR,
        report_name=report,
        billing_period=PERIOD,
        delivery_id=assembly,
        delivered_at=datetime(2025, 11, delivered_day or number + 3, 6, 0, tzinfo=UTC),
        bucket="officex-cost-reports",
        manifest_key=f"cur/{report}/20251101-20251201/{assembly}/{report}-Manifest.json",
        data_keys=(f"cur/{report}/20251101-20251201/{assembly}/{report}-1.csv.gz",),
    )


class FakeReader:
    """``DeliveryReader`` in memory: each delivery id maps to its costs, or to a rejection."""

    def __init__(self) -> None:
        self.deliveries: dict[str, list[BucketDayCost] | DeliveryRejected] = {}
        self.unattributed: dict[str, list[UnattributedCost]] = {}
        self.reads = 0

    def add(self, delivery: Delivery, costs: Costs, tags: Mapping[str, str] | None = None) -> None:
        items = []
        for (bucket, usage_day, kind), amounts in costs.items():
            for amount in amounts if isinstance(amounts, list) else [amounts]:
                key = ChargeKey(bucket, (tags or {}).get(bucket), day(usage_day), kind)
                items.append(BucketDayCost(key, amount))
        self.deliveries[delivery.delivery_id] = items

    def read(self, delivery: Delivery) -> ParsedDelivery:
        self.reads += 1
        found = self.deliveries[delivery.delivery_id]
        if isinstance(found, DeliveryRejected):
            raise found
        return ParsedDelivery(
            delivery=delivery,
            rows_read=len(found) * 3,
            s3_rows=len(found),
            costs=iter(list(found)),
            unattributed=list(self.unattributed.get(delivery.delivery_id, [])),
        )


def month(days: range, buckets: tuple[str, ...] = ("bucket-a", "bucket-b")) -> Costs:
    return {
        (bucket, number, kind): BASE[kind] * number * (2 if bucket == "bucket-b" else 1)
        for bucket in buckets
        for number in days
        for kind in (S, R, T)
    }


def total(amounts: Decimal | list[Decimal]) -> Decimal:
    return sum(amounts, Decimal(0)) if isinstance(amounts, list) else amounts


# The three deliveries of the issue: day 1–3; day 1–5 with day 2 revised up; day 1–5 with
# day 3 revised down and a credit (plus one key gone, which must be refunded).
D1, D2, D3 = delivery(1), delivery(2), delivery(3)
COSTS_1 = month(range(1, 4))
COSTS_2 = {**month(range(1, 6)), **{key: value * 3 for key, value in month(range(2, 3)).items()}}
COSTS_3: Costs = {
    **COSTS_2,
    **{key: value / 4 for key, value in month(range(3, 4)).items()},
    ("bucket-a", 4, S): [BASE[S] * 4, Decimal("-0.0123456789012")],  # a credit on day 4
}
DROPPED = ("bucket-b", 5, T)  # billed in D2, absent from D3
del COSTS_3[DROPPED]


S3_TRIGGERS = Triggers(low_nano=5 * USD, critical_nano=2 * USD, termination_nano=USD // 2)


def s3_offer(db: psycopg.Connection[Any]) -> None:
    catalog = read_catalog_file(REPO_ROOT / "catalog" / "catalog.yaml")
    offer = next(offer for offer in catalog.offers if offer.id == "s3-bucket")
    assert offer.pricing.markup == MARKUP
    PostgresCatalogStore(db).upsert_offer(offer, 0)


def s3_purchase(
    db: psycopg.Connection[Any],
    bucket: str | None,
    *,
    deposit_usd: int = 100,
    resource_status: str = "active",
    triggers: Triggers = S3_TRIGGERS,
    notify_email: str | None = None,
) -> UUID:
    purchase_id, _, _ = new_purchase(db, "s3-bucket", triggers=triggers, notify_email=notify_email)
    if deposit_usd:
        ledger_on(db).apply(ledger.credit(purchase_id, deposit_usd * USD, f"deposit-{purchase_id}"))
    if bucket is not None:
        db.execute(
            """INSERT INTO provisioned_resources (purchase_id, kind, name, region, status, deleted_at)
               VALUES (%s, 's3_bucket', %s, 'us-east-1', %s,
                       CASE WHEN %s = 'deleted' THEN now() END)""",
            (purchase_id, bucket, resource_status, resource_status),
        )
    return purchase_id


@pytest.fixture
def world(db: psycopg.Connection[Any]) -> dict[str, UUID]:
    s3_offer(db)
    return {
        "bucket-a": s3_purchase(db, "bucket-a"),
        # deleted buckets are still attributed: their last days still cost
        "bucket-b": s3_purchase(db, "bucket-b", resource_status="deleted"),
    }


@pytest.fixture
def reader() -> FakeReader:
    fake = FakeReader()
    fake.add(D1, COSTS_1)
    fake.add(D2, COSTS_2)
    fake.add(D3, COSTS_3)
    return fake


def billing_on(connection: psycopg.Connection[Any], reader: FakeReader) -> CostExportBilling:
    return CostExportBilling(PostgresTransactions(lambda: connection), reader)


def ledger_sums(db: psycopg.Connection[Any]) -> dict[tuple[UUID, str, str, str], int]:
    rows = db.execute(
        """SELECT purchase_id, metadata->>'bucket', metadata->>'usage_day', metadata->>'charge_kind',
                  sum(amount_nano)::bigint
             FROM ledger_entries WHERE source = 'cost-export'
            GROUP BY 1, 2, 3, 4"""
    ).fetchall()
    return {(row[0], row[1], row[2], row[3]): row[4] for row in rows}


def expected_sums(world: Mapping[str, UUID], costs: Costs) -> dict[tuple[UUID, str, str, str], int]:
    return {
        (world[bucket], bucket, day(number).isoformat(), kind.value): -vendor_price_nano(
            total(amounts), MARKUP
        )
        for (bucket, number, kind), amounts in costs.items()
    }


def nonzero(sums: Mapping[Any, int]) -> dict[Any, int]:
    return {key: value for key, value in sums.items() if value != 0}


def snapshot(db: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Everything charging writes: ledger, balances, charges, deliveries, outbox."""
    return {
        "ledger": db.execute(
            """SELECT id, purchase_id, kind, amount_nano, balance_after_nano, idempotency_key,
                      request_fingerprint FROM ledger_entries ORDER BY id"""
        ).fetchall(),
        "purchases": db.execute("SELECT id, balance_nano, status FROM purchases ORDER BY id").fetchall(),
        "charges": db.execute(
            """SELECT purchase_id, bucket, usage_day, charge_kind, billed_cost, billed_nano, last_delivery_id
                 FROM cost_export_charges ORDER BY 1, 2, 3, 4"""
        ).fetchall(),
        "deliveries": db.execute(
            """SELECT id, delivery_id, status, charged_nano, refunded_nano
                 FROM cost_export_deliveries ORDER BY id"""
        ).fetchall(),
        "outbox": db.execute("SELECT dedupe_key FROM outbox ORDER BY id").fetchall(),
        "staged": db.execute("SELECT count(*) FROM cost_export_staged_costs").fetchall(),
    }


def assert_charged_as(db: psycopg.Connection[Any], world: Mapping[str, UUID], costs: Costs) -> None:
    """Ledger sums per key are the delivery's cost × markup, rounded once per key; nothing else."""
    assert nonzero(ledger_sums(db)) == nonzero(expected_sums(world, costs))
    charges = db.execute(
        """SELECT purchase_id, bucket, usage_day, charge_kind, billed_cost, billed_nano
             FROM cost_export_charges"""
    ).fetchall()
    billed = {(row[0], row[1], row[2].isoformat(), row[3]): (row[4], row[5]) for row in charges}
    for (bucket, number, kind), amounts in costs.items():
        key = (world[bucket], bucket, day(number).isoformat(), kind.value)
        assert billed[key] == (total(amounts), vendor_price_nano(total(amounts), MARKUP))
    for purchase_id in world.values():
        assert_ledger_invariants(db, purchase_id)


# ------------------------------------------------------------------ restatements
def test_three_deliveries_end_exactly_at_the_last_one(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    billing = billing_on(db, reader)

    first = billing.process(D1)
    assert first.status is OutcomeStatus.APPLIED
    assert_charged_as(db, world, COSTS_1)
    second = billing.process(D2)
    assert second.status is OutcomeStatus.APPLIED
    assert_charged_as(db, world, COSTS_2)
    third = billing.process(D3)

    assert third.status is OutcomeStatus.APPLIED
    assert_charged_as(db, world, COSTS_3)
    # the second delivery only added days 4–5 and raised day 2: nothing refunded
    assert second.totals.refunded_nano == 0 and second.totals.charged_nano > 0
    # the third lowered day 3, credited day 4 and dropped a key: refunds only
    assert third.totals.charged_nano == 0 and third.totals.refunded_nano > 0
    dropped_key = (world["bucket-b"], "bucket-b", day(5).isoformat(), T.value)
    assert ledger_sums(db)[dropped_key] == 0, "a key gone from the newest delivery is refunded in full"
    refunds = db.execute(
        """SELECT kind, metadata->>'reason', metadata->>'delivery_id' FROM ledger_entries
            WHERE source = 'cost-export' AND amount_nano > 0"""
    ).fetchall()
    assert refunds and {row[:2] for row in refunds} == {("adjustment", "cost export restatement")}
    assert {row[2] for row in refunds} == {D3.delivery_id}
    debits = db.execute(
        "SELECT DISTINCT kind, meter FROM ledger_entries WHERE source = 'cost-export' AND amount_nano < 0"
    ).fetchall()
    assert {row[0] for row in debits} == {"usage"}
    assert {row[1] for row in debits} == {"s3:storage", "s3:requests", "s3:data_transfer"}
    statuses = db.execute(
        "SELECT delivery_id, status, charged_nano, refunded_nano FROM cost_export_deliveries ORDER BY id"
    ).fetchall()
    assert statuses == [
        (D1.delivery_id, "applied", first.totals.charged_nano, 0),
        (D2.delivery_id, "applied", second.totals.charged_nano, 0),
        (D3.delivery_id, "applied", 0, third.totals.refunded_nano),
    ]
    balance_a = db.execute(
        "SELECT balance_nano FROM purchases WHERE id = %s", (world["bucket-a"],)
    ).fetchone()
    expected_a = sum(
        vendor_price_nano(total(amounts), MARKUP)
        for (bucket, _, _), amounts in COSTS_3.items()
        if bucket == "bucket-a"
    )
    assert balance_a == (100 * USD - expected_a,)


def test_replaying_every_delivery_changes_nothing(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    billing = billing_on(db, reader)
    for each in (D1, D2, D3):
        billing.process(each)
    before = snapshot(db)

    replays = [billing.process(each) for each in (D1, D2, D3, D3, D2, D1)]

    assert [outcome.status for outcome in replays] == [OutcomeStatus.ALREADY_APPLIED] * 6
    assert snapshot(db) == before
    assert reader.reads == 3, "an applied delivery is not even read again"


@pytest.mark.parametrize("order", [(D3, D2, D1), (D2, D3, D1), (D3, D1, D2, D1, D3)])
def test_older_deliveries_never_override_a_newer_one(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader, order: tuple[Delivery, ...]
) -> None:
    billing = billing_on(db, reader)

    outcomes = [billing.process(each) for each in order]

    assert_charged_as(db, world, COSTS_3)
    assert outcomes[0].status is OutcomeStatus.APPLIED
    newest_seen = order[0]
    for each, outcome in zip(order[1:], outcomes[1:], strict=True):
        if each.delivered_at > newest_seen.delivered_at:
            assert outcome.status is OutcomeStatus.APPLIED
            newest_seen = each
        else:
            assert outcome.status in (OutcomeStatus.SUPERSEDED, OutcomeStatus.ALREADY_APPLIED)
    superseded = db.execute(
        """SELECT d.delivery_id, n.delivery_id FROM cost_export_deliveries d
             JOIN cost_export_deliveries n ON n.id = d.superseded_by WHERE d.status = 'superseded'"""
    ).fetchall()
    assert superseded and all(newer != older for older, newer in superseded)
    assert db.execute("SELECT count(*) FROM cost_export_staged_costs").fetchone() == (0,)


def test_reverse_order_ends_in_the_same_state_as_forward_order(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    billing = billing_on(db, reader)
    for each in (D3, D2, D1):
        billing.process(each)
    reverse = (nonzero(ledger_sums(db)), snapshot(db)["purchases"], snapshot(db)["charges"])
    before = snapshot(db)

    for each in (D1, D2, D3, D1):  # everything again, in order: nothing may move
        billing.process(each)

    assert snapshot(db) == before
    assert reverse[0] == nonzero(expected_sums(world, COSTS_3))
    assert [row[1] for row in reverse[1]] == [
        100 * USD
        - sum(
            vendor_price_nano(total(amounts), MARKUP)
            for (bucket, _, _), amounts in COSTS_3.items()
            if world[bucket] == purchase_id
        )
        for purchase_id, _, _ in reverse[1]
    ]


# ------------------------------------------------------------------ attribution
def test_unknown_buckets_are_summarised_never_dropped(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    costs: Costs = {
        ("bucket-a", 1, S): Decimal("1.00"),
        ("stranger-bucket", 1, S): Decimal("2.50"),
        ("stranger-bucket", 2, T): Decimal("0.25"),
        ("other-stranger", 1, R): Decimal("0.125"),
    }
    reader.add(D1, costs)
    reader.unattributed[D1.delivery_id] = [UnattributedCost("not_s3", "AmazonEC2", Decimal("40.5"), 12)]

    outcome = billing_on(db, reader).process(D1)

    assert outcome.status is OutcomeStatus.APPLIED
    assert nonzero(ledger_sums(db)) == {
        (world["bucket-a"], "bucket-a", day(1).isoformat(), "storage"): -vendor_price_nano(Decimal(1), MARKUP)
    }
    summary = {(item.reason, item.product): (item.cost, item.rows) for item in outcome.unattributed}
    assert summary == {
        ("not_s3", "AmazonEC2"): (Decimal("40.5"), 12),
        ("unknown_bucket", "AmazonS3"): (Decimal("2.875"), 3),
    }
    (stored,) = db.execute("SELECT unattributed FROM cost_export_deliveries").fetchone() or (None,)
    by_reason = {line["reason"]: line for line in stored}
    assert by_reason["not_s3"] == {"reason": "not_s3", "product": "AmazonEC2", "cost": "40.5", "rows": 12}
    assert by_reason["unknown_bucket"]["cost"] == "2.875"
    assert by_reason["unknown_bucket"]["top_buckets"] == [
        {"bucket": "stranger-bucket", "cost": "2.75"},
        {"bucket": "other-stranger", "cost": "0.125"},
    ]


def test_the_purchase_tag_attributes_buckets_missing_from_the_provisioning_table(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    by_our_id = s3_purchase(db, None)
    by_officex_id = s3_purchase(db, None)
    db.execute("UPDATE purchases SET officex_purchase_id = 'PurchaseID_7' WHERE id = %s", (by_officex_id,))
    not_s3, _, _ = new_purchase(db)
    db.execute("UPDATE offers SET kind = 'gemini_api_key' WHERE id = 'test-offer'")
    tags = {
        "tagged-1": str(by_our_id),
        "tagged-2": "PurchaseID_7",
        "tagged-3": str(not_s3),  # a purchase, but not of an S3 offer
        "tagged-4": "PurchaseID_unknown",
        # the provisioning table wins over the tag
        "bucket-a": str(by_our_id),
    }
    costs: Costs = {(bucket, 1, S): Decimal("0.8") for bucket in tags}
    reader.add(D1, costs, tags)

    outcome = billing_on(db, reader).process(D1)

    price = -vendor_price_nano(Decimal("0.8"), MARKUP)
    assert nonzero(ledger_sums(db)) == {
        (by_our_id, "tagged-1", day(1).isoformat(), "storage"): price,
        (by_officex_id, "tagged-2", day(1).isoformat(), "storage"): price,
        (world["bucket-a"], "bucket-a", day(1).isoformat(), "storage"): price,
    }
    assert [(item.reason, item.cost, item.rows) for item in outcome.unattributed] == [
        ("unknown_bucket", Decimal("1.6"), 2)
    ]


def test_an_ambiguous_tag_is_not_guessed(db: psycopg.Connection[Any], reader: FakeReader) -> None:
    s3_offer(db)
    for _ in range(2):
        purchase_id = s3_purchase(db, None)
        db.execute(
            "UPDATE purchases SET officex_purchase_id = 'PurchaseID_twice' WHERE id = %s", (purchase_id,)
        )
    reader.add(D1, {("tagged", 1, S): Decimal("1")}, {"tagged": "PurchaseID_twice"})

    outcome = billing_on(db, reader).process(D1)

    assert ledger_sums(db) == {}
    assert [(item.reason, item.cost) for item in outcome.unattributed] == [("ambiguous_purchase_tag", 1)]


def test_a_bucket_moving_to_another_purchase_is_refunded_to_the_first(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    billing = billing_on(db, reader)
    billing.process(D1)
    newcomer = s3_purchase(db, None)
    db.execute("UPDATE provisioned_resources SET purchase_id = %s WHERE name = 'bucket-b'", (newcomer,))

    billing.process(D2)

    moved = {**world, "bucket-b": newcomer}
    assert_charged_as(db, moved, COSTS_2)
    first_owner = {key: value for key, value in ledger_sums(db).items() if key[0] == world["bucket-b"]}
    assert first_owner and set(first_owner.values()) == {0}


# ------------------------------------------------------------------ failures
def _rejected_midway(items: list[BucketDayCost]) -> Iterator[BucketDayCost]:
    yield from items[:5]
    raise DeliveryRejected("officex-cur-1.csv.gz: truncated gzip stream")


class MidwayRejectingReader(FakeReader):
    """Rejects while the costs are being consumed (a truncation found late)."""

    def read(self, delivery: Delivery) -> ParsedDelivery:
        parsed = super().read(delivery)
        if delivery.delivery_id == D2.delivery_id:
            parsed.costs = _rejected_midway(list(parsed.costs))
        return parsed


@pytest.mark.parametrize("midway", [False, True], ids=["at-read", "while-staging"])
def test_a_rejected_delivery_charges_nothing_and_a_later_good_one_applies(
    db: psycopg.Connection[Any], world: dict[str, UUID], midway: bool
) -> None:
    reader = MidwayRejectingReader() if midway else FakeReader()
    reader.add(D1, COSTS_1)
    reader.add(D2, COSTS_2)
    reader.add(D3, COSTS_3)
    if not midway:
        reader.deliveries[D2.delivery_id] = DeliveryRejected("officex-cur-1.csv.gz: truncated gzip stream")
    billing = billing_on(db, reader)
    billing.process(D1)
    before = snapshot(db)

    failed = billing.process(D2)

    assert failed.status is OutcomeStatus.FAILED
    assert failed.reason == "officex-cur-1.csv.gz: truncated gzip stream"
    after = snapshot(db)
    assert {name: rows for name, rows in after.items() if name != "deliveries"} == {
        name: rows for name, rows in before.items() if name != "deliveries"
    }
    assert db.execute(
        "SELECT status, reason, finished_at IS NOT NULL FROM cost_export_deliveries WHERE delivery_id = %s",
        (D2.delivery_id,),
    ).fetchone() == ("failed", "officex-cur-1.csv.gz: truncated gzip stream", True)

    later = billing.process(D3)

    assert later.status is OutcomeStatus.APPLIED
    assert_charged_as(db, world, COSTS_3)


def test_a_failed_delivery_is_taken_up_again_when_replayed(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    good = list(reader.deliveries[D1.delivery_id])  # type: ignore[arg-type]
    reader.deliveries[D1.delivery_id] = DeliveryRejected("no lineItem/ResourceId column")
    billing = billing_on(db, reader)
    assert billing.process(D1).status is OutcomeStatus.FAILED
    reader.deliveries[D1.delivery_id] = good  # e.g. a reader fix deployed

    replayed = billing.process(D1)

    assert replayed.status is OutcomeStatus.APPLIED
    assert_charged_as(db, world, COSTS_1)
    assert db.execute("SELECT status, reason, attempts FROM cost_export_deliveries").fetchone() == (
        "applied",
        None,
        2,
    )


def test_an_outage_while_reading_raises_and_leaves_the_delivery_to_retry(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    class FlakyReader(FakeReader):
        def read(self, delivery: Delivery) -> ParsedDelivery:
            raise OSError("connection reset by peer")

    flaky = FlakyReader()
    with pytest.raises(OSError, match="connection reset"):
        billing_on(db, flaky).process(D1)
    assert db.execute("SELECT status, reason FROM cost_export_deliveries").fetchone() == (
        "processing",
        "interrupted (OSError); will be retried",
    )
    assert ledger_sums(db) == {}

    assert billing_on(db, reader).process(D1).status is OutcomeStatus.APPLIED
    assert_charged_as(db, world, COSTS_1)


# ------------------------------------------------------------------ concurrency, triggers
def test_the_same_delivery_processed_twice_at_once_is_charged_once(
    database_url: str, db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    outcomes = run_concurrently(
        database_url, 2, lambda connection, _: billing_on(connection, reader).process(D2)
    )

    assert sorted(outcome.status.value for outcome in outcomes) == ["already_applied", "applied"]
    assert_charged_as(db, world, COSTS_2)
    entries = db.execute("SELECT count(*) FROM ledger_entries WHERE source = 'cost-export'").fetchone()
    assert entries == (len(COSTS_2),)


def test_two_deliveries_of_one_period_at_once_end_at_the_newest(
    database_url: str, db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    run_concurrently(
        database_url, 2, lambda connection, index: billing_on(connection, reader).process((D2, D3)[index])
    )

    assert_charged_as(db, world, COSTS_3)


def test_a_charge_crossing_the_low_trigger_moves_the_status_and_writes_the_outbox(
    db: psycopg.Connection[Any], reader: FakeReader
) -> None:
    s3_offer(db)
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=6, notify_email="ops@customer.example")
    reader.add(D1, {("bucket-a", 1, S): Decimal("1.2")})  # 1.50 USD at 1.25 → balance 4.50 ≤ low 5

    billing_on(db, reader).process(D1)

    assert db.execute(
        "SELECT status, balance_nano FROM purchases WHERE id = %s", (purchase_id,)
    ).fetchone() == (
        "low",
        6 * USD - 1_500_000_000,
    )
    outbox = db.execute(
        "SELECT kind, payload->>'from', payload->>'to' FROM outbox WHERE purchase_id = %s", (purchase_id,)
    ).fetchall()
    assert outbox == [("notify.email", "active", "low")]

    # restated down to 0.50 USD: balance 5.50 clears low + margin (0.25): back to active, notified
    reader.add(D2, {("bucket-a", 1, S): Decimal("0.4")})
    billing_on(db, reader).process(D2)

    assert db.execute("SELECT status FROM purchases WHERE id = %s", (purchase_id,)).fetchone() == ("active",)
    outbox = db.execute(
        "SELECT kind, payload->>'from', payload->>'to' FROM outbox WHERE purchase_id = %s ORDER BY id",
        (purchase_id,),
    ).fetchall()
    assert outbox == [("notify.email", "active", "low"), ("notify.email", "low", "active")]
    assert_ledger_invariants(db, purchase_id)


def test_usage_that_overdraws_is_still_charged_and_suspends(
    db: psycopg.Connection[Any], reader: FakeReader
) -> None:
    s3_offer(db)
    purchase_id = s3_purchase(db, "bucket-a", deposit_usd=1)
    reader.add(D1, {("bucket-a", 1, T): Decimal("4")})

    billing_on(db, reader).process(D1)

    assert db.execute(
        "SELECT status, balance_nano FROM purchases WHERE id = %s", (purchase_id,)
    ).fetchone() == (
        "suspended",
        USD - 5 * USD,
    )


# ------------------------------------------------------------------ dry run, listing
def test_a_dry_run_shows_the_charges_and_writes_nothing(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    billing = billing_on(db, reader)
    billing.process(D1)
    before = snapshot(db)

    preview = billing.preview(D2)

    assert preview.status is OutcomeStatus.DRY_RUN
    assert snapshot(db) == before
    assert preview.recorded_status is None
    expected_diff = {
        purchase_id: sum(
            -value for key, value in expected_sums(world, COSTS_2).items() if key[0] == purchase_id
        )
        - sum(-value for key, value in expected_sums(world, COSTS_1).items() if key[0] == purchase_id)
        for purchase_id in world.values()
    }
    assert {
        purchase_id: charges.charged_nano - charges.refunded_nano
        for purchase_id, charges in preview.totals.by_purchase.items()
    } == expected_diff
    billing.process(D2)
    assert db.execute(
        "SELECT charged_nano FROM cost_export_deliveries WHERE delivery_id = %s", (D2.delivery_id,)
    ).fetchone() == (preview.totals.charged_nano,)
    assert billing.preview(D1).status is OutcomeStatus.SUPERSEDED
    again = billing.preview(D2)
    assert again.recorded_status is not None and again.recorded_status.value == "applied"
    assert again.totals.charges_changed == 0


def test_recent_deliveries_list_status_and_reason(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    reader.deliveries[D2.delivery_id] = DeliveryRejected("not gzip")
    billing = billing_on(db, reader)
    for each in (D1, D2):
        billing.process(each)

    records = billing.recent_deliveries(10)

    assert [(record.delivery_id, record.status.value, record.reason) for record in records] == [
        (D2.delivery_id, "failed", "not gzip"),
        (D1.delivery_id, "applied", None),
    ]


def test_long_report_names_still_give_unique_keys_within_limits(
    db: psycopg.Connection[Any], world: dict[str, UUID], reader: FakeReader
) -> None:
    long_report = "r" * 150
    long_delivery = delivery(1, report=long_report)
    reader.add(long_delivery, {("bucket-a", 1, S): Decimal("1"), ("bucket-a", 2, S): Decimal("1")})

    billing_on(db, reader).process(long_delivery)

    keys = [
        row[0]
        for row in db.execute("SELECT idempotency_key FROM ledger_entries WHERE source = 'cost-export'")
    ]
    assert len(keys) == len(set(keys)) == 2
    assert all(len(key) <= 200 for key in keys)
