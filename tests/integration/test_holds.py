"""Spend authorizations: holds never exceed the balance, are captured by usage, expire by TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.errors import IdempotencyConflict, InsufficientFunds, InvalidRequest, Unauthorized
from billing.services.holds import SpendAuthorization, SpendAuthorizations
from billing.services.lifecycle import PurchaseLifecycle
from billing.services.metering import MeteringService, UsageEvent
from tests.integration.ledger_support import (
    assert_ledger_invariants,
    ledger_on,
    new_purchase,
    run_concurrently,
)

CENT = 10_000_000


def _funded(db: psycopg.Connection[Any], balance_nano: int) -> tuple[UUID, str]:
    purchase_id, _, vendor_key = new_purchase(db)
    ledger_on(db).apply(ledger.credit(purchase_id, balance_nano, "opening"))
    return purchase_id, vendor_key


def _hold_status(db: psycopg.Connection[Any], hold_id: UUID) -> str:
    row = db.execute("SELECT status FROM holds WHERE id = %s", (hold_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_fifty_concurrent_authorizations_against_a_balance_that_covers_ten(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    purchase_id, vendor_key = _funded(db, 10 * CENT + CENT // 2)  # covers ten holds of one cent

    def authorize(connection: psycopg.Connection[Any], worker: int) -> bool:
        service = SpendAuthorizations(PostgresTransactions(lambda: connection))
        try:
            service.authorize(str(purchase_id), vendor_key, SpendAuthorization(f"call-{worker}", CENT))
        except InsufficientFunds:
            return False
        return True

    outcomes = run_concurrently(database_url, 50, authorize)

    assert outcomes.count(True) == 10
    assert assert_ledger_invariants(db, purchase_id) == (10 * CENT + CENT // 2, 10 * CENT)


def test_a_retried_authorization_is_the_same_hold(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _funded(db, 100 * CENT)
    service = SpendAuthorizations(PostgresTransactions(lambda: db))

    first = service.authorize(str(purchase_id), vendor_key, SpendAuthorization("call-1", 30 * CENT))
    again = service.authorize(str(purchase_id), vendor_key, SpendAuthorization("call-1", 30 * CENT))

    assert (again.hold_id, again.expires_at, again.receipt.replayed) == (
        first.hold_id,
        first.expires_at,
        True,
    )
    assert first.purchase.held_nano == again.purchase.held_nano == 30 * CENT
    with pytest.raises(IdempotencyConflict):
        service.authorize(str(purchase_id), vendor_key, SpendAuthorization("call-1", 31 * CENT))
    with pytest.raises(InsufficientFunds) as refused:
        service.authorize(str(purchase_id), vendor_key, SpendAuthorization("call-2", 71 * CENT))
    assert refused.value.extra == {"available_nano": 70 * CENT, "required_nano": 71 * CENT}
    with pytest.raises(Unauthorized):
        service.authorize(str(purchase_id), "vk_" + "x" * 43, SpendAuthorization("call-3", CENT))
    assert assert_ledger_invariants(db, purchase_id) == (100 * CENT, 30 * CENT)


def test_usage_captures_its_hold_and_frees_the_rest(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _funded(db, 100 * CENT)
    hold = SpendAuthorizations(PostgresTransactions(lambda: db)).authorize(
        str(purchase_id), vendor_key, SpendAuthorization("call-1", 40 * CENT)
    )
    metering = MeteringService(PostgresTransactions(lambda: db))
    event = UsageEvent("call-1-usage", Decimal(1200), "tokens", cost_nano=12 * CENT, hold_id=hold.hold_id)

    charged = metering.meter(str(purchase_id), vendor_key, [event])
    replayed = metering.meter(str(purchase_id), vendor_key, [event])

    assert charged.events[0].hold_status == "captured" and not charged.events[0].replayed
    assert replayed.events[0].replayed
    assert (charged.purchase.balance_nano, charged.purchase.held_nano) == (88 * CENT, 0)
    assert _hold_status(db, hold.hold_id) == "captured"
    assert assert_ledger_invariants(db, purchase_id) == (88 * CENT, 0)


def test_usage_against_a_lapsed_hold_is_still_charged(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _funded(db, 100 * CENT)
    hold = SpendAuthorizations(PostgresTransactions(lambda: db)).authorize(
        str(purchase_id), vendor_key, SpendAuthorization("call-1", 40 * CENT, ttl=timedelta(seconds=1))
    )
    swept = PurchaseLifecycle(PostgresTransactions(lambda: db)).sweep(
        datetime.now(UTC) + timedelta(minutes=1)
    )
    assert swept["holds_expired"] == 1

    outcome = MeteringService(PostgresTransactions(lambda: db)).meter(
        str(purchase_id),
        vendor_key,
        [UsageEvent("late", Decimal(1), "call", cost_nano=45 * CENT, hold_id=hold.hold_id)],
    )

    assert outcome.events[0].hold_status == "expired"
    assert assert_ledger_invariants(db, purchase_id) == (55 * CENT, 0)


def test_an_unknown_hold_refuses_the_event_and_changes_nothing(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _funded(db, 100 * CENT)
    other_purchase, other_key = _funded(db, 100 * CENT)
    foreign = SpendAuthorizations(PostgresTransactions(lambda: db)).authorize(
        str(other_purchase), other_key, SpendAuthorization("theirs", CENT)
    )
    metering = MeteringService(PostgresTransactions(lambda: db))

    for hold_id in (uuid4(), foreign.hold_id):
        with pytest.raises(InvalidRequest):
            metering.meter(
                str(purchase_id),
                vendor_key,
                [UsageEvent("x", Decimal(1), "call", cost_nano=CENT, hold_id=hold_id)],
            )

    assert assert_ledger_invariants(db, purchase_id) == (100 * CENT, 0)
    assert _hold_status(db, foreign.hold_id) == "active"


def test_a_suspended_purchase_cannot_authorize(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _funded(db, 1_000)  # at the test termination trigger: suspended
    service = SpendAuthorizations(PostgresTransactions(lambda: db))

    with pytest.raises(InsufficientFunds) as refused:
        service.authorize(str(purchase_id), vendor_key, SpendAuthorization("call", 1))

    assert refused.value.extra == {"status": "suspended"}
    assert assert_ledger_invariants(db, purchase_id) == (1_000, 0)
