"""meter-usage in one statement (migration 0010) leaves the same books as charging event by event.

Postgres stores charge all events of a request with one call of ``meter_usage_apply()``; the
service's event-by-event path (``meter_each``, used for events that settle a hold) stays. The
same requests sent through both paths, to two purchases alike, must give the
same answers and leave the same entries, usage rows, statuses and outbox rows, including when a
batch crosses thresholds, replays keys or reuses them for something else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.adapters.postgres.purchase_store import PostgresPurchaseStore
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.errors import BillingError, IdempotencyConflict
from billing.domain.purchase import Triggers
from billing.services.metering import (
    MeteringOutcome,
    MeteringService,
    UsageEvent,
)
from tests.integration.ledger_support import (
    assert_ledger_invariants,
    ledger_on,
    new_purchase,
    run_concurrently,
)

USD = 10**9
CENT = USD // 100
TRIGGERS = Triggers(low_nano=10 * USD, critical_nano=5 * USD, termination_nano=1 * USD)
NOW = datetime.now(UTC).replace(microsecond=0)  # one clock for both paths (usage partitions are recent)


def _purchase(db: psycopg.Connection[Any], opening_nano: int) -> tuple[UUID, str]:
    """A purchase with every notification channel, so each transition writes outbox rows."""
    purchase_id, _, vendor_key = new_purchase(db, triggers=TRIGGERS, notify_email="ops@customer.example")
    db.execute(
        """UPDATE purchases SET webhook_url = 'https://hooks.customer.example/billing',
                  webhook_secret_ciphertext = '\\x00', customer_org_endpoint = 'https://org.officex.example',
                  customer_org_id = 'org_1', officex_purchase_id = 'px_1',
                  customer_org_api_key_ciphertext = '\\x00'
            WHERE id = %s""",
        (purchase_id,),
    )
    ledger_on(db).apply(ledger.credit(purchase_id, opening_nano, "opening"))
    return purchase_id, vendor_key


def _books(db: psycopg.Connection[Any], purchase_id: UUID) -> dict[str, Any]:
    """Everything metering writes for a purchase, without ids and times that differ between purchases."""
    entries = db.execute(
        """SELECT idempotency_key, kind, amount_nano, held_delta_nano, balance_after_nano, held_after_nano,
                  request_fingerprint, source, meter, quantity, unit, metadata
             FROM ledger_entries WHERE purchase_id = %s ORDER BY id""",
        (purchase_id,),
    ).fetchall()
    usage = db.execute(
        """SELECT u.idempotency_key, u.occurred_at, u.meter, u.quantity, u.unit, u.cost_nano, u.description,
                  u.metadata, e.idempotency_key = u.idempotency_key
             FROM usage_events u JOIN ledger_entries e ON e.id = u.ledger_entry_id
            WHERE u.purchase_id = %s ORDER BY u.ledger_entry_id""",
        (purchase_id,),
    ).fetchall()
    purchase = db.execute(
        """SELECT status, balance_nano, held_nano, status_version, suspended_at IS NOT NULL,
                  grace_until IS NOT NULL
             FROM purchases WHERE id = %s""",
        (purchase_id,),
    ).fetchone()
    outbox = db.execute(
        """SELECT kind, payload->>'from', payload->>'to', payload->'transition', payload->'balance_nano',
                  payload->'held_nano'
             FROM outbox WHERE purchase_id = %s ORDER BY id""",
        (purchase_id,),
    ).fetchall()
    return {"entries": entries, "usage": usage, "purchase": purchase, "outbox": outbox}


def _answer(outcome: MeteringOutcome) -> tuple[Any, ...]:
    purchase = outcome.purchase
    return (
        purchase.status,
        purchase.balance_nano,
        purchase.held_nano,
        purchase.triggers,
        purchase.grace_until is not None,
        outcome.allowed,
        [
            (event.idempotency_key, event.cost_nano, event.replayed, event.hold_status)
            for event in outcome.events
        ],
    )


def _meter(
    charge: Callable[[str, str, list[UsageEvent]], MeteringOutcome],
    purchase_id: UUID,
    key: str,
    events: list[UsageEvent],
) -> Any:
    try:
        return _answer(charge(str(purchase_id), key, events))
    except BillingError as error:
        return type(error).__name__, error.extra


def _event(key: str, cents: int, variant: int = 0) -> UsageEvent:
    """``variant`` changes what a client sends besides the price (timestamp, description, metadata)."""
    return UsageEvent(
        idempotency_key=key,
        usage_amount=Decimal(cents) / 10,
        unit="tokens",
        cost_nano=cents * CENT,
        occurred_at=NOW - timedelta(minutes=variant) if variant % 2 else None,
        description=f"call {variant}" if variant % 3 == 0 else None,
        metadata={"model": "m", "n": variant} if variant % 4 == 1 else None,
    )


event_strategy = st.tuples(
    st.integers(min_value=0, max_value=24),  # key: a small pool, so keys repeat across and within batches
    st.integers(min_value=1, max_value=400),  # cents
    st.integers(min_value=0, max_value=5),  # variant
)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    opening_usd=st.integers(min_value=8, max_value=40),
    batches=st.lists(st.lists(event_strategy, min_size=1, max_size=30), min_size=1, max_size=6),
)
def test_batches_leave_the_same_books_as_event_by_event_charging(
    db: psycopg.Connection[Any], opening_usd: int, batches: list[list[tuple[int, int, int]]]
) -> None:
    at_once, at_once_key = _purchase(db, opening_usd * USD)
    one_by_one, one_by_one_key = _purchase(db, opening_usd * USD)
    service = MeteringService(PostgresTransactions(lambda: db), clock=lambda: NOW)

    for batch in batches:
        events = [_event(f"k{key}", cents, variant) for key, cents, variant in batch]
        assert _meter(service.meter, at_once, at_once_key, events) == _meter(
            service.meter_each, one_by_one, one_by_one_key, events
        )

    assert _books(db, at_once) == _books(db, one_by_one)
    assert_ledger_invariants(db, at_once)


def test_a_batch_that_crosses_two_thresholds_notifies_each_crossing(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _purchase(db, 12 * USD)
    service = MeteringService(PostgresTransactions(lambda: db))

    # 100 × $0.10 from $12: low at $10.00 (event 20), critical at $5.00 (event 70)
    outcome = service.meter(str(purchase_id), vendor_key, [_event(f"e{index}", 10) for index in range(100)])

    transitions = db.execute(
        """SELECT payload->>'from', payload->>'to', (payload->>'balance_nano')::bigint FROM outbox
            WHERE purchase_id = %s AND kind = 'notify.email' ORDER BY id""",
        (purchase_id,),
    ).fetchall()
    assert transitions == [("active", "low", 10 * USD), ("low", "critical", 5 * USD)]
    view = PostgresPurchaseStore(db).view(purchase_id)
    assert view is not None and outcome.purchase == view
    assert (view.status, view.balance_nano) == ("critical", 2 * USD)
    assert assert_ledger_invariants(db, purchase_id) == (2 * USD, 0)


def test_the_answer_is_the_purchase_as_it_stands_after_the_batch(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _purchase(db, 3 * USD)
    service = MeteringService(PostgresTransactions(lambda: db))

    outcome = service.meter(
        str(purchase_id), vendor_key, [_event("a", 150), _event("b", 150), _event("c", 1)]
    )

    view = PostgresPurchaseStore(db).view(purchase_id)
    assert view is not None and outcome.purchase == view
    assert view.status == "suspended" and view.grace_until is not None and not outcome.allowed


def test_a_key_repeated_inside_a_batch_is_a_replay_or_refuses_the_batch(db: psycopg.Connection[Any]) -> None:
    purchase_id, vendor_key = _purchase(db, 20 * USD)
    service = MeteringService(PostgresTransactions(lambda: db))

    same = service.meter(str(purchase_id), vendor_key, [_event("x", 5), _event("y", 7), _event("x", 5)])
    assert [(event.cost_nano, event.replayed) for event in same.events] == [
        (5 * CENT, False),
        (7 * CENT, False),
        (5 * CENT, True),
    ]
    assert same.events[0].entry_id == same.events[2].entry_id
    with pytest.raises(IdempotencyConflict) as refused:
        service.meter(str(purchase_id), vendor_key, [_event("z", 1), _event("w", 2), _event("w", 3)])
    assert refused.value.extra == {"idempotency_key": "w"}
    assert assert_ledger_invariants(db, purchase_id) == (20 * USD - 12 * CENT, 0)  # z was not charged


@pytest.mark.slow
def test_overlapping_batches_at_once_charge_each_key_once(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    purchase_id, vendor_key = _purchase(db, 1_000 * USD)
    answered: dict[str, set[int]] = {}

    def send(connection: psycopg.Connection[Any], worker: int) -> None:
        service = MeteringService(PostgresTransactions(lambda: connection))
        for round_ in range(5):  # 8 workers x 5 batches of 20 keys out of 60: every key is sent often
            keys = [(worker * 7 + round_ * 11 + index * 3) % 60 for index in range(20)]
            outcome = service.meter(
                str(purchase_id), vendor_key, [_event(f"k{key}", key + 1) for key in keys]
            )
            for event in outcome.events:
                answered.setdefault(event.idempotency_key, set()).add(event.entry_id)

    run_concurrently(database_url, 8, send)
    recorded = dict(
        db.execute(
            "SELECT idempotency_key, id FROM ledger_entries WHERE purchase_id = %s AND kind = 'usage'",
            (purchase_id,),
        ).fetchall()
    )
    assert {key: {entry} for key, entry in recorded.items()} == answered
    charged = sum(int(key[1:]) + 1 for key in recorded) * CENT
    assert assert_ledger_invariants(db, purchase_id) == (1_000 * USD - charged, 0)
    (rows,) = db.execute(
        "SELECT count(*) FROM usage_events WHERE purchase_id = %s", (purchase_id,)
    ).fetchone() or (0,)
    assert rows == len(recorded)
