"""meter-usage: each event charged once, in one transaction with its usage row, even in a retry storm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.errors import IdempotencyConflict, InvalidRequest, Unauthorized
from billing.domain.pricing import GeminiUsageMetadata
from billing.services.metering import GeminiCall, MeteringService, UsageEvent
from local.seed import import_default_catalog
from tests.integration.ledger_support import (
    assert_ledger_invariants,
    ledger_on,
    new_purchase,
    run_concurrently,
)


def _event(key: str, cost_nano: int = 1_000_000, **extra: Any) -> UsageEvent:
    return UsageEvent(
        idempotency_key=key, usage_amount=Decimal(100), unit="tokens", cost_nano=cost_nano, **extra
    )


def _funded(db: psycopg.Connection[Any], usd: int = 10, offer_id: str | None = None) -> tuple[UUID, str, str]:
    purchase_id, customer_key, vendor_key = new_purchase(db, offer_id) if offer_id else new_purchase(db)
    ledger_on(db).apply(ledger.credit(purchase_id, usd * 10**9, "opening"))
    return purchase_id, customer_key, vendor_key


def _usage_rows(db: psycopg.Connection[Any], purchase_id: UUID) -> int:
    (count,) = db.execute(
        "SELECT count(*) FROM usage_events WHERE purchase_id = %s", (purchase_id,)
    ).fetchone() or (0,)
    return int(count)


def test_single_and_batch_replay_and_conflict(db: psycopg.Connection[Any]) -> None:
    purchase_id, _, vendor_key = _funded(db)
    metering = MeteringService(PostgresTransactions(lambda: db))
    first = metering.meter(str(purchase_id), vendor_key, [_event("e1")])
    assert first.purchase.balance_nano == 10 * 10**9 - 1_000_000 and first.allowed
    batch = metering.meter(str(purchase_id), vendor_key, [_event("e1"), _event("e2", 2_000_000)])
    assert [(event.idempotency_key, event.replayed) for event in batch.events] == [
        ("e1", True),
        ("e2", False),
    ]
    assert batch.purchase.balance_nano == 10 * 10**9 - 3_000_000
    with pytest.raises(IdempotencyConflict):
        metering.meter(str(purchase_id), vendor_key, [_event("e3", 5), _event("e2", 2_000_001)])
    assert _usage_rows(db, purchase_id) == 2  # the refused batch wrote nothing, e3 included
    assert assert_ledger_invariants(db, purchase_id) == (10 * 10**9 - 3_000_000, 0)


def test_retry_storm_charges_each_event_once(db: psycopg.Connection[Any], database_url: str) -> None:
    purchase_id, _, vendor_key = _funded(db, usd=100)

    def four_calls(connection: psycopg.Connection[Any], worker: int) -> None:
        metering = MeteringService(PostgresTransactions(lambda: connection))
        for call in range(4):  # 50 connections x 4 = 200 calls; every event is sent twice
            index = (worker * 4 + call) % 100
            metering.meter(str(purchase_id), vendor_key, [_event(f"storm-{index}", 1_000_000 + index)])

    run_concurrently(database_url, 50, four_calls)
    unique_cost = sum(1_000_000 + index for index in range(100))
    assert assert_ledger_invariants(db, purchase_id) == (100 * 10**9 - unique_cost, 0)
    assert _usage_rows(db, purchase_id) == 100


def test_gemini_calls_are_priced_from_the_offer(db: psycopg.Connection[Any]) -> None:
    import_default_catalog(db)
    purchase_id, _, vendor_key = new_purchase(db, offer_id="gemini-api-key")
    ledger_on(db).apply(ledger.credit(purchase_id, 20 * 10**9, "opening"))
    usage = GeminiUsageMetadata.model_validate({"promptTokenCount": 250_000, "candidatesTokenCount": 5_000})
    outcome = MeteringService(PostgresTransactions(lambda: db)).meter(
        str(purchase_id),
        vendor_key,
        [UsageEvent("g1", Decimal(255_000), "tokens", gemini=GeminiCall("gemini-2.5-pro", usage))],
    )
    assert outcome.events[0].cost_nano == 840_000_000  # (250k × 2.50 + 5k × 15.00) / 1M × 1.20


def test_bad_events_are_refused_and_change_nothing(db: psycopg.Connection[Any]) -> None:
    import_default_catalog(db)
    purchase_id, customer_key, vendor_key = _funded(db, offer_id="s3-bucket")
    metering = MeteringService(PostgresTransactions(lambda: db))
    now = datetime.now(UTC)
    with pytest.raises(InvalidRequest, match="within the last 35 days"):
        metering.meter(str(purchase_id), vendor_key, [_event("old", occurred_at=now - timedelta(days=36))])
    with pytest.raises(InvalidRequest, match="within the last 35 days"):
        metering.meter(str(purchase_id), vendor_key, [_event("future", occurred_at=now + timedelta(hours=1))])
    with pytest.raises(InvalidRequest, match="does not price Gemini"):
        usage = GeminiUsageMetadata.model_validate({"promptTokenCount": 10})
        metering.meter(
            str(purchase_id), vendor_key, [UsageEvent("g", Decimal(10), "t", gemini=GeminiCall("x", usage))]
        )
    with pytest.raises(Unauthorized):
        metering.meter(str(purchase_id), customer_key, [_event("wrong-key")])
    assert assert_ledger_invariants(db, purchase_id) == (10 * 10**9, 0)
    assert _usage_rows(db, purchase_id) == 0


@pytest.mark.parametrize("events", [1, 3], ids=["single", "batch"])
def test_the_one_statement_checks_the_vendor_key_and_writes_nothing_without_it(
    db: psycopg.Connection[Any], events: int
) -> None:
    """Explicit costs go straight to meter_usage_apply(), which checks the key's hash itself."""
    purchase_id, customer_key, vendor_key = _funded(db)
    other_id, _, other_vendor_key = _funded(db)
    metering = MeteringService(PostgresTransactions(lambda: db))
    batch = [_event(f"k{index}") for index in range(events)]
    attempts = {
        "customer key": (purchase_id, customer_key),
        "another purchase's vendor key": (purchase_id, other_vendor_key),
        "unknown purchase": (uuid4(), vendor_key),
        "malformed id": ("not-a-purchase", vendor_key),
    }
    for name, (target, key) in attempts.items():
        with pytest.raises(Unauthorized) as refused:
            metering.meter(str(target), key, batch)
        assert str(refused.value) == "invalid purchase id or API key", name
    for purchase in (purchase_id, other_id):
        assert assert_ledger_invariants(db, purchase) == (10 * 10**9, 0)
        assert _usage_rows(db, purchase) == 0
    # the right key charges, and its retry is a replay (the key check does not stand in the way)
    first = metering.meter(str(purchase_id), vendor_key, batch)
    again = metering.meter(str(purchase_id), vendor_key, batch)
    assert [event.replayed for event in first.events] == [False] * events
    assert [event.replayed for event in again.events] == [True] * events
    assert again.purchase.balance_nano == first.purchase.balance_nano == 10 * 10**9 - events * 1_000_000


def test_usage_beyond_the_balance_is_recorded_and_stops_serving(db: psycopg.Connection[Any]) -> None:
    purchase_id, _, vendor_key = _funded(db, usd=1)
    outcome = MeteringService(PostgresTransactions(lambda: db)).meter(
        str(purchase_id), vendor_key, [_event("big", 2 * 10**9)]
    )
    assert outcome.purchase.balance_nano == -(10**9) and not outcome.allowed
