"""Balance triggers: the status follows every balance change, one outbox row per channel and crossing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.errors import InvalidRequest
from billing.domain.purchase import PurchaseStatus, Triggers
from billing.domain.triggers import hysteresis_nano, status_for
from billing.services.lifecycle import PurchaseLifecycle
from billing.services.metering import MeteringService, UsageEvent
from tests.integration.ledger_support import (
    assert_ledger_invariants,
    ledger_on,
    new_purchase,
    run_concurrently,
)

USD = 10**9
TRIGGERS = Triggers(low_nano=10 * USD, critical_nano=5 * USD, termination_nano=1 * USD)
MARGIN = hysteresis_nano(TRIGGERS)  # 0.50 USD
NOTIFY_KINDS = ("notify.email", "notify.webhook", "officex.status")


def _purchase(
    db: psycopg.Connection[Any], *, opening_usd: int, grace: timedelta = timedelta(hours=72)
) -> UUID:
    """A purchase with every notification channel configured and ``opening_usd`` credited."""
    purchase_id, _, _ = new_purchase(
        db, triggers=TRIGGERS, grace_period=grace, notify_email="ops@customer.example"
    )
    db.execute(
        """UPDATE purchases SET webhook_url = 'https://hooks.customer.example/billing',
                  webhook_secret_ciphertext = '\\x00', customer_org_endpoint = 'https://org.officex.example',
                  customer_org_id = 'org_1', officex_purchase_id = 'px_1',
                  customer_org_api_key_ciphertext = '\\x00'
            WHERE id = %s""",
        (purchase_id,),
    )
    if opening_usd:
        ledger_on(db).apply(ledger.credit(purchase_id, opening_usd * USD, "opening"))
    return purchase_id


def _spend(db: psycopg.Connection[Any], purchase_id: UUID, amount_nano: int) -> None:
    ledger_on(db).apply(ledger.debit(purchase_id, amount_nano, f"spend-{uuid4()}", require_available=False))


def _top_up(db: psycopg.Connection[Any], purchase_id: UUID, amount_nano: int) -> None:
    ledger_on(db).apply(ledger.credit(purchase_id, amount_nano, f"topup-{uuid4()}"))


def _status(db: psycopg.Connection[Any], purchase_id: UUID) -> str:
    row = db.execute("SELECT status FROM purchases WHERE id = %s", (purchase_id,)).fetchone()
    assert row is not None
    return str(row[0])


def _transitions(db: psycopg.Connection[Any], purchase_id: UUID, kind: str) -> list[tuple[str, str]]:
    rows = db.execute(
        """SELECT payload->>'from', payload->>'to' FROM outbox
            WHERE purchase_id = %s AND kind = %s ORDER BY id""",
        (purchase_id, kind),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def _kinds(db: psycopg.Connection[Any], purchase_id: UUID) -> dict[str, int]:
    rows = db.execute(
        "SELECT kind, count(*) FROM outbox WHERE purchase_id = %s GROUP BY kind", (purchase_id,)
    ).fetchall()
    return {row[0]: row[1] for row in rows}


# ------------------------------------------------------------------ the rule itself


def _sql_statuses(
    db: psycopg.Connection[Any], cases: list[tuple[PurchaseStatus, int, Triggers]]
) -> list[PurchaseStatus]:
    rows = db.execute(
        """SELECT purchase_status_for(s, b, l, c, t)
             FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])
                  WITH ORDINALITY AS cases (s, b, l, c, t, n)
            ORDER BY n""",
        (
            [case[0].value for case in cases],
            [case[1] for case in cases],
            [case[2].low_nano for case in cases],
            [case[2].critical_nano for case in cases],
            [case[2].termination_nano for case in cases],
        ),
    ).fetchall()
    return [PurchaseStatus(row[0]) for row in rows]


def test_the_sql_rule_matches_the_python_specification_at_every_edge(db: psycopg.Connection[Any]) -> None:
    trigger_sets = [TRIGGERS, Triggers(3_000, 2_000, 1_000), Triggers(2 * USD, 1 * USD, 0)]
    cases = []
    for triggers in trigger_sets:
        margin = hysteresis_nano(triggers)
        edges = {-(10**12), 0, 10**15}
        for threshold in (triggers.low_nano, triggers.critical_nano, triggers.termination_nano):
            edges |= {threshold + delta for delta in (-1, 0, 1, margin - 1, margin, margin + 1)}
        cases += [(status, balance, triggers) for status, balance in itertools.product(PurchaseStatus, edges)]
    expected = [status_for(status, balance, triggers) for status, balance, triggers in cases]
    assert _sql_statuses(db, cases) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.sampled_from(PurchaseStatus),
    balance=st.integers(-(10**13), 10**13),
    termination=st.integers(0, 10**12),
    gaps=st.tuples(st.integers(1, 10**12), st.integers(1, 10**12)),
)
def test_the_sql_rule_matches_the_python_specification_anywhere(
    db: psycopg.Connection[Any], status: PurchaseStatus, balance: int, termination: int, gaps: tuple[int, int]
) -> None:
    triggers = Triggers(termination + gaps[0] + gaps[1], termination + gaps[0], termination)
    assert _sql_statuses(db, [(status, balance, triggers)]) == [status_for(status, balance, triggers)]


# ------------------------------------------------------------------ crossings and recovery


def test_each_crossing_writes_one_notification_per_channel(db: psycopg.Connection[Any]) -> None:
    purchase_id = _purchase(db, opening_usd=20)
    assert _kinds(db, purchase_id) == {}  # funded above low: nothing to say

    for _ in range(22):  # $20 down to -$2 in $1 steps: crosses low, critical and termination once each
        _spend(db, purchase_id, 1 * USD)

    crossings = [("active", "low"), ("low", "critical"), ("critical", "suspended")]
    for kind in NOTIFY_KINDS:
        assert _transitions(db, purchase_id, kind) == crossings
    assert _transitions(db, purchase_id, "resource.suspend") == [("critical", "suspended")]
    suspended_at, grace_until, changed_at = db.execute(
        "SELECT suspended_at, grace_until, status_changed_at FROM purchases WHERE id = %s", (purchase_id,)
    ).fetchone() or (None, None, None)
    assert suspended_at == changed_at and grace_until == suspended_at + timedelta(hours=72)

    _top_up(db, purchase_id, 20 * USD)  # -$2 + $20 = $18: straight back to active

    assert _status(db, purchase_id) == "active"
    for kind in NOTIFY_KINDS:
        assert _transitions(db, purchase_id, kind)[3:] == [("suspended", "active")]
    assert _transitions(db, purchase_id, "resource.resume") == [("suspended", "active")]
    assert db.execute("SELECT grace_until FROM purchases WHERE id = %s", (purchase_id,)).fetchone() == (None,)
    payload = db.execute(
        """SELECT payload FROM outbox WHERE purchase_id = %s AND kind = 'notify.email'
            ORDER BY id DESC LIMIT 1""",
        (purchase_id,),
    ).fetchone()
    assert payload is not None
    assert payload[0]["balance_nano"] == 18 * USD and payload[0]["transition"] == 4
    assert_ledger_invariants(db, purchase_id)


def test_hysteresis_keeps_a_hovering_balance_from_flapping(db: psycopg.Connection[Any]) -> None:
    purchase_id = _purchase(db, opening_usd=11)
    _spend(db, purchase_id, 990_000_000)  # $10.01: still active
    assert _status(db, purchase_id) == "active"

    for _ in range(20):  # hover around the low trigger: $9.99 ⇄ $10.01
        _spend(db, purchase_id, 20_000_000)
        _top_up(db, purchase_id, 20_000_000)

    assert _status(db, purchase_id) == "low"
    assert _transitions(db, purchase_id, "notify.email") == [("active", "low")]

    _top_up(db, purchase_id, MARGIN - 10_000_000)  # exactly low + margin: still not clear of it
    assert _status(db, purchase_id) == "low"
    _top_up(db, purchase_id, 1)
    assert _status(db, purchase_id) == "active"
    assert _transitions(db, purchase_id, "notify.email") == [("active", "low"), ("low", "active")]


def test_a_top_up_returns_a_suspended_purchase_to_the_level_its_balance_deserves(
    db: psycopg.Connection[Any],
) -> None:
    purchase_id = _purchase(db, opening_usd=1)
    assert _status(db, purchase_id) == "suspended"  # $1 is the termination trigger

    _top_up(db, purchase_id, 6 * USD)  # $7: between critical and low

    assert _status(db, purchase_id) == "low"
    assert _transitions(db, purchase_id, "notify.email") == [("active", "suspended"), ("suspended", "low")]
    assert _transitions(db, purchase_id, "resource.resume") == [("suspended", "low")]


def test_concurrent_spending_crosses_each_threshold_once(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    purchase_id = _purchase(db, opening_usd=20)

    def spend(connection: psycopg.Connection[Any], worker: int) -> None:
        service = ledger_on(connection)
        service.apply(ledger.debit(purchase_id, USD // 2, f"race-{worker}", require_available=False))

    run_concurrently(database_url, 40, spend)  # 40 x $0.50 = $20, in any order

    assert assert_ledger_invariants(db, purchase_id) == (0, 0)
    assert _transitions(db, purchase_id, "notify.email") == [
        ("active", "low"),
        ("low", "critical"),
        ("critical", "suspended"),
    ]


def test_a_refused_batch_notifies_nothing(db: psycopg.Connection[Any]) -> None:
    purchase_id = _purchase(db, opening_usd=11)
    vendor_key = "vk_" + "x" * 43
    db.execute(
        "UPDATE purchases SET vendor_key_hash = sha256(%s::bytea) WHERE id = %s",
        (vendor_key.encode(), purchase_id),
    )
    metering = MeteringService(PostgresTransactions(lambda: db))
    crossing = UsageEvent("crosses-low", Decimal(1), "call", cost_nano=2 * USD)
    broken = UsageEvent("bad-hold", Decimal(1), "call", cost_nano=1, hold_id=uuid4())

    with pytest.raises(InvalidRequest):
        metering.meter(str(purchase_id), vendor_key, [crossing, broken])

    assert _status(db, purchase_id) == "active"
    assert _kinds(db, purchase_id) == {}
    assert assert_ledger_invariants(db, purchase_id) == (11 * USD, 0)


# ------------------------------------------------------------------ the sweep: grace and re-evaluation


def test_the_grace_period_ends_in_termination_once(db: psycopg.Connection[Any]) -> None:
    purchase_id = _purchase(db, opening_usd=1, grace=timedelta(hours=1))
    lifecycle = PurchaseLifecycle(PostgresTransactions(lambda: db))
    now = datetime.now(UTC)

    assert lifecycle.sweep(now)["purchases_terminated"] == 0  # still within its grace period
    assert lifecycle.sweep(now + timedelta(hours=2))["purchases_terminated"] == 1
    assert lifecycle.sweep(now + timedelta(hours=3))["purchases_terminated"] == 0

    assert _status(db, purchase_id) == "terminated"
    assert _transitions(db, purchase_id, "resource.delete") == [("suspended", "terminated")]
    assert _transitions(db, purchase_id, "notify.email")[-1] == ("suspended", "terminated")

    _top_up(db, purchase_id, 50 * USD)  # money that arrives later is kept, the purchase stays ended
    assert _status(db, purchase_id) == "terminated"
    assert _kinds(db, purchase_id)["notify.email"] == 2


def test_two_sweeps_at_once_terminate_each_purchase_once(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    purchases = [_purchase(db, opening_usd=1, grace=timedelta(minutes=1)) for _ in range(60)]
    later = datetime.now(UTC) + timedelta(minutes=5)

    def sweep(connection: psycopg.Connection[Any], _: int) -> int:
        lifecycle = PurchaseLifecycle(PostgresTransactions(lambda: connection), batch_size=7)
        return lifecycle.sweep(later)["purchases_terminated"]

    assert sum(run_concurrently(database_url, 2, sweep)) == 60
    (deletes,) = db.execute(
        "SELECT count(*) FROM outbox WHERE kind = 'resource.delete' AND purchase_id = ANY(%s)", (purchases,)
    ).fetchone() or (None,)
    assert deletes == 60


def test_the_sweep_corrects_statuses_the_trigger_did_not_see(db: psycopg.Connection[Any]) -> None:
    purchase_id = _purchase(db, opening_usd=20)
    db.execute("ALTER TABLE purchases DISABLE TRIGGER purchases_follow_balance")
    try:
        _spend(db, purchase_id, 16 * USD)  # $4: critical, but nothing re-derived the status
    finally:
        db.execute("ALTER TABLE purchases ENABLE TRIGGER purchases_follow_balance")
    assert _status(db, purchase_id) == "active"

    outcome = PurchaseLifecycle(PostgresTransactions(lambda: db)).sweep(datetime.now(UTC))

    assert outcome["statuses_corrected"] == 1
    assert _status(db, purchase_id) == "critical"
    assert _transitions(db, purchase_id, "notify.email") == [("active", "critical")]


def test_a_top_up_awaiting_confirmations_holds_termination_back(db: psycopg.Connection[Any]) -> None:
    purchase_id = _purchase(db, opening_usd=1, grace=timedelta(hours=1))
    wallet_id = uuid4()
    db.execute(
        """INSERT INTO checkout_wallets (id, offer_id, chain, chain_id, token, token_address, address,
                                         hd_index, min_target_balance_nano, status, expires_at, purchase_id)
           SELECT %s, offer_id, 'base', 8453, 'USDC', '0xtoken', '0xdeposit', 7, 1, 'finalized', now(), id
             FROM purchases WHERE id = %s""",
        (wallet_id, purchase_id),
    )
    db.execute("UPDATE purchases SET wallet_id = %s WHERE id = %s", (wallet_id, purchase_id))
    db.execute(
        """INSERT INTO deposits (chain_id, tx_hash, log_index, wallet_id, token_address, sender, amount_units,
                                 amount_nano, block_number, state)
           VALUES (8453, '0xabc', 0, %s, '0xtoken', '0xpayer', 20000000, %s, 100, 'seen')""",
        (wallet_id, 20 * USD),
    )
    lifecycle = PurchaseLifecycle(PostgresTransactions(lambda: db))
    later = datetime.now(UTC) + timedelta(hours=2)

    assert lifecycle.sweep(later)["purchases_terminated"] == 0  # $20 on its way would restore it
    assert _status(db, purchase_id) == "suspended"

    db.execute("UPDATE deposits SET state = 'reorged' WHERE wallet_id = %s", (wallet_id,))
    assert lifecycle.sweep(later)["purchases_terminated"] == 1
