from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.errors import (
    DependencyUnavailable,
    IdempotencyConflict,
    InsufficientFunds,
    NotFound,
    StateConflict,
)
from billing.services.ledger import apply_in
from tests.integration.ledger_support import (
    assert_ledger_invariants,
    ledger_on,
    new_purchase,
    run_concurrently,
)

NOW = datetime.now(UTC)


def test_credit_debit_replay_and_conflict(db: psycopg.Connection[Any]) -> None:
    purchase_id, _, _ = new_purchase(db)
    service = ledger_on(db)
    first = service.apply(ledger.credit(purchase_id, 1_000, "deposit-1"))
    assert (first.balance_after_nano, first.replayed) == (1_000, False)
    replay = service.apply(ledger.credit(purchase_id, 1_000, "deposit-1"))
    assert replay.replayed and replay.entry_id == first.entry_id
    with pytest.raises(IdempotencyConflict):
        service.apply(ledger.credit(purchase_id, 999, "deposit-1"))
    assert service.apply(ledger.debit(purchase_id, 400, "use-1")).balance_after_nano == 600
    assert (
        service.apply(ledger.adjustment(purchase_id, -100, "fix-1", reason="goodwill")).balance_after_nano
        == 500
    )
    assert assert_ledger_invariants(db, purchase_id) == (500, 0)


def test_debit_beyond_available_is_refused_unless_overdraft_allowed(db: psycopg.Connection[Any]) -> None:
    purchase_id, _, _ = new_purchase(db)
    service = ledger_on(db)
    service.apply(ledger.credit(purchase_id, 100, "d"))
    service.apply(ledger.place_hold(purchase_id, uuid4(), 60, NOW + timedelta(hours=1), "h"))
    with pytest.raises(InsufficientFunds) as refused:
        service.apply(ledger.debit(purchase_id, 50, "u1"))
    assert refused.value.extra == {"available_nano": 40, "required_nano": 50}
    assert (
        service.apply(ledger.debit(purchase_id, 150, "u2", require_available=False)).balance_after_nano == -50
    )
    assert assert_ledger_invariants(db, purchase_id) == (-50, 60)


def test_unknown_purchase_is_not_found(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(NotFound):
        ledger_on(db).apply(ledger.credit(uuid4(), 1, "k"))


def test_holds_release_once_and_expire_by_sweep(db: psycopg.Connection[Any]) -> None:
    purchase_id, _, _ = new_purchase(db)
    service = ledger_on(db)
    service.apply(ledger.credit(purchase_id, 1_000, "d"))
    live, stale_a, stale_b = uuid4(), uuid4(), uuid4()
    service.apply(ledger.place_hold(purchase_id, live, 100, NOW + timedelta(hours=1), "h-live"))
    service.apply(ledger.place_hold(purchase_id, stale_a, 200, NOW - timedelta(seconds=1), "h-a"))
    service.apply(ledger.place_hold(purchase_id, stale_b, 300, NOW - timedelta(seconds=2), "h-b"))
    assert assert_ledger_invariants(db, purchase_id) == (1_000, 600)
    with pytest.raises(StateConflict):
        service.apply(ledger.place_hold(purchase_id, live, 5, NOW + timedelta(hours=1), "h-same-id"))
    assert service.expire_due_holds(NOW, batch_size=1) == 2  # two batches of one
    assert service.expire_due_holds(NOW) == 0
    assert assert_ledger_invariants(db, purchase_id) == (1_000, 100)
    released = service.apply(ledger.release_hold(purchase_id, live, "r-live"))
    assert (released.held_delta_nano, released.held_after_nano) == (-100, 0)
    assert service.apply(ledger.release_hold(purchase_id, live, "r-live")).replayed
    with pytest.raises(StateConflict):
        service.apply(ledger.release_hold(purchase_id, live, "r-again"))
    with pytest.raises(StateConflict):
        service.apply(ledger.release_hold(purchase_id, stale_a, "r-expired"))
    with pytest.raises(NotFound):
        service.apply(ledger.release_hold(purchase_id, uuid4(), "r-unknown"))
    assert assert_ledger_invariants(db, purchase_id) == (1_000, 0)


def test_fifty_concurrent_debits_lose_no_update(db: psycopg.Connection[Any], database_url: str) -> None:
    purchase_id, _, _ = new_purchase(db)
    ledger_on(db).apply(ledger.credit(purchase_id, 50 * 1_234_567, "opening"))

    def debit(connection: psycopg.Connection[Any], index: int) -> int:
        receipt = ledger_on(connection).apply(ledger.debit(purchase_id, 1_234_567, f"debit-{index}"))
        return receipt.balance_after_nano

    balances_after = run_concurrently(database_url, 50, debit)
    assert sorted(balances_after) == [step * 1_234_567 for step in range(50)]
    assert assert_ledger_invariants(db, purchase_id) == (0, 0)
    with pytest.raises(InsufficientFunds):
        ledger_on(db).apply(ledger.debit(purchase_id, 1, "one-too-many"))


def test_concurrent_debits_never_overdraw(db: psycopg.Connection[Any], database_url: str) -> None:
    purchase_id, _, _ = new_purchase(db)
    ledger_on(db).apply(ledger.credit(purchase_id, 25 * 100, "opening"))

    def debit_three_times(connection: psycopg.Connection[Any], index: int) -> int:
        service, succeeded = ledger_on(connection), 0
        for attempt in range(3):
            try:
                service.apply(ledger.debit(purchase_id, 100, f"debit-{index}-{attempt}"))
                succeeded += 1
            except InsufficientFunds:
                pass
        return succeeded

    assert sum(run_concurrently(database_url, 20, debit_three_times)) == 25
    assert assert_ledger_invariants(db, purchase_id) == (0, 0)


def test_same_key_raced_from_many_connections_applies_once(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    purchase_id, _, _ = new_purchase(db)
    ledger_on(db).apply(ledger.credit(purchase_id, 10_000, "opening"))

    def debit(connection: psycopg.Connection[Any], _: int) -> int:
        return ledger_on(connection).apply(ledger.debit(purchase_id, 700, "the-same-key")).entry_id

    assert len(set(run_concurrently(database_url, 12, debit))) == 1
    assert assert_ledger_invariants(db, purchase_id) == (9_300, 0)


def test_error_after_the_ledger_write_rolls_everything_back(db: psycopg.Connection[Any]) -> None:
    purchase_id, _, _ = new_purchase(db)
    ledger_on(db).apply(ledger.credit(purchase_id, 1_000, "opening"))

    def charge_then_fail(unit: Any) -> None:
        apply_in(unit, ledger.debit(purchase_id, 300, "charge"))
        apply_in(unit, ledger.place_hold(purchase_id, uuid4(), 100, NOW + timedelta(hours=1), "hold"))
        raise RuntimeError("injected failure after the writes")

    with pytest.raises(RuntimeError):
        PostgresTransactions(lambda: db).run(charge_then_fail)
    assert assert_ledger_invariants(db, purchase_id) == (1_000, 0)
    (rows,) = db.execute(
        "SELECT count(*) FROM ledger_entries WHERE purchase_id = %s", (purchase_id,)
    ).fetchone() or (0,)
    assert rows == 1


def test_killed_connection_mid_transaction_writes_nothing(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    purchase_id, _, _ = new_purchase(db)
    ledger_on(db).apply(ledger.credit(purchase_id, 1_000, "opening"))
    victim = psycopg.connect(database_url, autocommit=True)
    (victim_pid,) = victim.execute("SELECT pg_backend_pid()").fetchone() or (0,)
    written = threading.Event()
    killed = threading.Event()

    def charge_and_wait(unit: Any) -> None:
        apply_in(unit, ledger.debit(purchase_id, 300, "charge"))
        if not written.is_set():
            written.set()
            killed.wait(10)
        unit.connection.execute("SELECT 1")

    def kill_when_written() -> None:
        written.wait(10)
        db.execute("SELECT pg_terminate_backend(%s)", (victim_pid,))
        killed.set()

    killer = threading.Thread(target=kill_when_written)
    killer.start()
    try:
        with pytest.raises(DependencyUnavailable):
            PostgresTransactions(lambda: victim).run(charge_and_wait)
    finally:
        killer.join()
        victim.close()
    assert assert_ledger_invariants(db, purchase_id) == (1_000, 0)


def test_service_uses_one_transaction_per_operation(db: psycopg.Connection[Any]) -> None:
    """A unit of work spanning several entries commits them together."""
    purchase_id, _, _ = new_purchase(db)

    def open_and_charge(unit: Any) -> None:
        apply_in(unit, ledger.credit(purchase_id, 500, "a"))
        apply_in(unit, ledger.debit(purchase_id, 200, "b"))

    PostgresTransactions(lambda: db).run(open_and_charge)
    assert assert_ledger_invariants(db, purchase_id) == (300, 0)


def test_the_idempotency_probe_uses_the_unique_index(db: psycopg.Connection[Any]) -> None:
    """Another index leading with purchase_id let the planner scan a purchase's whole history per write."""
    leading_purchase_id = [
        row[0]
        for row in db.execute(
            """SELECT indexrelid::regclass::text FROM pg_index
                WHERE indrelid = 'ledger_entries'::regclass AND indpred IS NULL
                  AND indkey[0] = (SELECT attnum FROM pg_attribute
                                    WHERE attrelid = 'ledger_entries'::regclass
                                      AND attname = 'purchase_id')"""
        )
    ]
    assert leading_purchase_id == ["ledger_entries_idempotency"]
    purchase_id, _, _ = new_purchase(db)
    service = ledger_on(db)
    service.apply(ledger.credit(purchase_id, 10**12, "opening"))
    for index in range(300):
        service.apply(ledger.debit(purchase_id, 1, f"d-{index}"))
    (plan,) = db.execute(
        """EXPLAIN (FORMAT JSON) SELECT 1 FROM ledger_entries
            WHERE purchase_id = %s AND idempotency_key = %s""",
        (purchase_id, "d-7"),
    ).fetchone() or (None,)
    assert "ledger_entries_idempotency" in json.dumps(plan)
