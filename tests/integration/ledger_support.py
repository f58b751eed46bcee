"""Helpers for ledger tests: purchases created the way finalize will create them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import psycopg

from billing.adapters.postgres.purchase_store import PostgresPurchaseStore
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.api_keys import KeyRole, generate_api_key, hash_api_key
from billing.domain.purchase import NewPurchase, Triggers
from billing.services.ledger import LedgerService

OFFER_ID = "test-offer"
T = TypeVar("T")


def ensure_offer(connection: psycopg.Connection[Any]) -> None:
    connection.execute(
        """INSERT INTO offers (id, sku, kind, title, min_deposit_nano)
           VALUES (%s, %s, 's3_bucket', 'Test offer', 0) ON CONFLICT DO NOTHING""",
        (OFFER_ID, OFFER_ID.upper()),
    )


TEST_TRIGGERS = Triggers(low_nano=3_000, critical_nano=2_000, termination_nano=1_000)


def new_purchase(
    connection: psycopg.Connection[Any],
    offer_id: str = OFFER_ID,
    *,
    triggers: Triggers = TEST_TRIGGERS,
    grace_period: timedelta = timedelta(hours=72),
    notify_email: str | None = None,
) -> tuple[UUID, str, str]:
    """A purchase with zero balance; returns (id, customer key, vendor key)."""
    if offer_id == OFFER_ID:
        ensure_offer(connection)
    purchase_id = uuid4()
    customer, vendor = generate_api_key(KeyRole.CUSTOMER), generate_api_key(KeyRole.VENDOR)
    PostgresPurchaseStore(connection).insert(
        NewPurchase(
            id=purchase_id,
            offer_id=offer_id,
            triggers=triggers,
            customer_key_hash=hash_api_key(customer),
            vendor_key_hash=hash_api_key(vendor),
            grace_period=grace_period,
            notify_email=notify_email,
        )
    )
    return purchase_id, customer, vendor


def ledger_on(connection: psycopg.Connection[Any]) -> LedgerService:
    return LedgerService(PostgresTransactions(lambda: connection))


def assert_ledger_invariants(connection: psycopg.Connection[Any], purchase_id: UUID) -> tuple[int, int]:
    """balance == Σ amounts, held == Σ held deltas == Σ active holds, keys unique; returns (balance, held)."""
    balance, held = connection.execute(
        "SELECT balance_nano, held_nano FROM purchases WHERE id = %s", (purchase_id,)
    ).fetchone() or (None, None)
    sum_amount, sum_held, entries, keys = connection.execute(
        """SELECT COALESCE(sum(amount_nano), 0), COALESCE(sum(held_delta_nano), 0), count(*),
                  count(DISTINCT idempotency_key)
             FROM ledger_entries WHERE purchase_id = %s""",
        (purchase_id,),
    ).fetchone() or (None, None, None, None)
    (active_holds,) = connection.execute(
        "SELECT COALESCE(sum(amount_nano), 0) FROM holds WHERE purchase_id = %s AND status = 'active'",
        (purchase_id,),
    ).fetchone() or (None,)
    assert balance == sum_amount, f"balance {balance} != ledger sum {sum_amount}"
    assert held == sum_held == active_holds, f"held {held}, ledger {sum_held}, active holds {active_holds}"
    assert entries == keys
    last = connection.execute(
        """SELECT balance_after_nano, held_after_nano FROM ledger_entries
            WHERE purchase_id = %s ORDER BY id DESC LIMIT 1""",
        (purchase_id,),
    ).fetchone()
    if last is not None:
        assert last == (balance, held), "the newest entry's running totals must match the purchase"
    assert isinstance(balance, int) and isinstance(held, int)
    return balance, held


def run_concurrently(
    database_url: str, workers: int, work: Callable[[psycopg.Connection[Any], int], T]
) -> list[T]:
    """Run ``work(connection, index)`` on threads with a connection each, released together."""
    connections = [psycopg.connect(database_url, autocommit=True) for _ in range(workers)]
    start = threading.Barrier(workers)

    def run(index: int) -> T:
        start.wait()
        return work(connections[index], index)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, range(workers)))
    finally:
        for connection in connections:
            connection.close()
