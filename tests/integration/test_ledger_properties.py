"""Property: any interleaving of ledger operations keeps the books exact.

Random sequences of credits, debits, holds, releases and adjustments, drawing
idempotency keys from a small pool so that keys repeat (same request → replay,
other request → conflict), run concurrently from several connections. In the
end the balance equals the ledger sum, held equals the active holds, and every
key was applied at most once, with every caller that succeeded holding the
receipt of that one application.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.domain import ledger
from billing.domain.errors import IdempotencyConflict, InsufficientFunds, NotFound, StateConflict
from tests.integration.ledger_support import (
    assert_ledger_invariants,
    ledger_on,
    new_purchase,
    run_concurrently,
)

WORKERS = 4
KEYS = [f"key-{index}" for index in range(10)]
HOLD_NAMESPACE = uuid.UUID("6f1c1a1e-0000-4000-8000-000000000000")
EXPECTED = (IdempotencyConflict, InsufficientFunds, StateConflict, NotFound)

operation_strategy = st.tuples(
    st.sampled_from(["credit", "debit", "overdraft", "hold", "release", "adjust"]),
    st.integers(min_value=1, max_value=5_000),
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),  # which hold a release refers to
)


def _build(purchase_id: uuid.UUID, spec: tuple[str, int, str, str]) -> ledger.LedgerOperation:
    kind, amount, key, hold_key = spec
    expires = datetime.now(UTC) + timedelta(hours=1)
    if kind == "credit":
        return ledger.credit(purchase_id, amount, key)
    if kind == "debit":
        return ledger.debit(purchase_id, amount, key)
    if kind == "overdraft":
        return ledger.debit(purchase_id, amount, key, require_available=False)
    if kind == "hold":
        return ledger.place_hold(purchase_id, uuid.uuid5(HOLD_NAMESPACE, key), amount, expires, key)
    if kind == "release":
        return ledger.release_hold(purchase_id, uuid.uuid5(HOLD_NAMESPACE, hold_key), key)
    return ledger.adjustment(purchase_id, amount if amount % 2 else -amount, key, reason="property test")


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    opening=st.integers(min_value=0, max_value=20_000),
    plans=st.lists(st.lists(operation_strategy, min_size=1, max_size=12), min_size=WORKERS, max_size=WORKERS),
)
def test_concurrent_random_operations_keep_the_books_exact(
    db: psycopg.Connection[Any],
    database_url: str,
    opening: int,
    plans: list[list[tuple[str, int, str, str]]],
) -> None:
    purchase_id, _, _ = new_purchase(db)
    if opening:
        ledger_on(db).apply(ledger.credit(purchase_id, opening, "opening"))
    receipts: dict[str, set[int]] = defaultdict(set)
    lock = threading.Lock()

    def run(connection: psycopg.Connection[Any], worker: int) -> None:
        service = ledger_on(connection)
        for spec in plans[worker]:
            try:
                receipt = service.apply(_build(purchase_id, spec))
            except EXPECTED:
                continue
            with lock:
                receipts[spec[2]].add(receipt.entry_id)

    run_concurrently(database_url, WORKERS, run)
    assert_ledger_invariants(db, purchase_id)
    recorded = dict(
        db.execute(
            """SELECT idempotency_key, id FROM ledger_entries
                WHERE purchase_id = %s AND idempotency_key <> 'opening'""",
            (purchase_id,),
        ).fetchall()
    )
    for key, entry_ids in receipts.items():
        assert entry_ids == {recorded[key]}, (
            f"{key} answered with entries {entry_ids}, recorded {recorded[key]}"
        )
    assert set(recorded) == set(receipts)
