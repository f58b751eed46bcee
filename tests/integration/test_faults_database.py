"""Fault injection, Postgres: a connection killed mid-request and a statement timeout.

The real meter-usage Lambda handler runs in-process on its own shared connection (as in a
warm container); a second connection (the ``db`` fixture) plays the database's other
clients: it kills the handler's backend (``pg_terminate_backend``) at a chosen moment, or
holds the purchase row lock. Each test then checks that the client got a clean answer, that
nothing was half-written (balance == Σ ledger, no usage row without its entry, no outbox
row for a rolled-back status change), and that a retry charges each event exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from billing.adapters.postgres.connection import forget_connection
from billing.adapters.postgres.usage_store import PostgresUsageStore
from billing.domain import ledger
from billing.settings import get_database_settings
from local.handlers import LocalLambdaContext, load_handler
from local.template import load_template
from tests.conftest import load_event
from tests.integration.ledger_support import assert_ledger_invariants, ledger_on, new_purchase

FUNCTION = load_template().function_by_folder("meter_usage")
# new_purchase's triggers: low 3000, critical 2000, termination 1000 nano-USD.
OPENING_NANO = 5_000
FIRST_COST_NANO = 2_500  # 5000 → 2500: crosses the low trigger (a status change with outbox rows)
SECOND_COST_NANO = 100
HOLD_NANO = 200


def _nano(amount_nano: int) -> str:
    return f"0.{amount_nano:09d}"


def _batch(hold_id: UUID | None = None) -> dict[str, Any]:
    second: dict[str, Any] = {
        "idempotency_key": "e2",
        "usage_amount": "1",
        "unit": "call",
        "cost_incurred": _nano(SECOND_COST_NANO),
    }
    if hold_id is not None:
        second["hold_id"] = str(hold_id)
    first = {
        "idempotency_key": "e1",
        "usage_amount": "2",
        "unit": "call",
        "cost_incurred": _nano(FIRST_COST_NANO),
    }
    return {"events": [first, second]}


def _meter(purchase_id: UUID, vendor_key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /purchase/{id}/meter-usage through the real handler (its own shared connection)."""
    event = load_event("meter_usage_single")
    path = f"/purchase/{purchase_id}/meter-usage"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = {"purchase_id": str(purchase_id)}
    event["headers"]["authorization"] = f"Bearer {vendor_key}"
    event["body"] = json.dumps(body)
    event["headers"]["content-length"] = str(len(event["body"].encode()))
    event["requestContext"]["requestId"] = str(uuid4())
    response: dict[str, Any] = load_handler(FUNCTION)(event, LocalLambdaContext.for_function(FUNCTION))
    return response


def _problem(response: dict[str, Any], status: int) -> dict[str, Any]:
    assert response["statusCode"] == status, response
    assert response["headers"]["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = json.loads(response["body"])
    assert problem["status"] == status and {"type", "title", "detail"} <= problem.keys()
    return problem


def _funded(db: psycopg.Connection[Any]) -> tuple[UUID, str]:
    purchase_id, _, vendor_key = new_purchase(db, notify_email="ops@customer.example")
    ledger_on(db).apply(ledger.credit(purchase_id, OPENING_NANO, "opening"))
    return purchase_id, vendor_key


def _hold(db: psycopg.Connection[Any], purchase_id: UUID) -> UUID:
    hold_id = uuid4()
    expires_at = datetime.now(UTC) + timedelta(minutes=5)
    ledger_on(db).apply(ledger.place_hold(purchase_id, hold_id, HOLD_NANO, expires_at, "call-2"))
    return hold_id


def _written(db: psycopg.Connection[Any], purchase_id: UUID) -> dict[str, Any]:
    """What the request left behind, beyond the opening credit (and the hold)."""
    usage = db.execute(
        "SELECT idempotency_key, ledger_entry_id FROM usage_events WHERE purchase_id = %s ORDER BY 1",
        (purchase_id,),
    ).fetchall()
    charges = db.execute(
        "SELECT idempotency_key, id FROM ledger_entries WHERE purchase_id = %s AND source = 'meter-usage'"
        " AND kind = 'usage' ORDER BY 1",
        (purchase_id,),
    ).fetchall()
    outbox = db.execute(
        "SELECT dedupe_key FROM outbox WHERE purchase_id = %s ORDER BY 1", (purchase_id,)
    ).fetchall()
    status = db.execute("SELECT status FROM purchases WHERE id = %s", (purchase_id,)).fetchone()
    assert usage == charges, "every usage row has its ledger entry and every usage entry its row"
    return {
        "usage": [key for key, _ in usage],
        "outbox": [key for (key,) in outbox],
        "status": status[0] if status else None,
    }


def _kill_after(
    db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, method: str, *, times: int, before: bool
) -> list[int]:
    """Wrap ``PostgresUsageStore.<method>``: terminate the handler's backend ``times`` times.

    ``before``: kill just before the wrapped call runs (it then meets a dead connection);
    otherwise just after it (the next statement does). Returns the killed backend pids.
    """
    original: Callable[..., Any] = getattr(PostgresUsageStore, method)
    killed: list[int] = []

    def kill(store: PostgresUsageStore) -> None:
        pid = store._connection.info.backend_pid
        # the timeout makes pg_terminate_backend wait until the backend is gone
        assert db.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)
        killed.append(pid)

    def wrapped(store: PostgresUsageStore, *args: Any, **kwargs: Any) -> Any:
        if before and len(killed) < times:
            kill(store)
        result = original(store, *args, **kwargs)
        if not before and len(killed) < times and kwargs.get("idempotency_key") == "e1":
            kill(store)  # between the first and the second event of the batch
        return result

    monkeypatch.setattr(PostgresUsageStore, method, wrapped)
    return killed


# ------------------------------------------------------------------ connection killed
@pytest.mark.parametrize(("times", "status"), [(1, 200), (2, 503)], ids=["retried", "unavailable"])
def test_a_connection_killed_between_two_events_leaves_no_partial_batch(
    db: psycopg.Connection[Any], handler_env: None, monkeypatch: pytest.MonkeyPatch, times: int, status: int
) -> None:
    """The event-by-event path (an event settles a hold): one explicit transaction per batch."""
    purchase_id, vendor_key = _funded(db)
    hold_id = _hold(db, purchase_id)
    killed = _kill_after(db, monkeypatch, "record", times=times, before=False)

    response = _meter(purchase_id, vendor_key, _batch(hold_id))

    assert len(killed) == times and len(set(killed)) == times  # a fresh connection each time
    if status == 503:  # the stale connection is retried once; killed again, the client gets a 503
        problem = _problem(response, 503)
        assert problem["detail"] == "the database is unavailable; nothing was written"
        assert _written(db, purchase_id) == {"usage": [], "outbox": [], "status": "active"}
        assert assert_ledger_invariants(db, purchase_id) == (OPENING_NANO, HOLD_NANO)
        # the database is back (the hook has used up its kills); the vendor retries the same batch
        response = _meter(purchase_id, vendor_key, _batch(hold_id))
    assert response["statusCode"] == 200, response
    answer = json.loads(response["body"])
    assert [(event["idempotency_key"], event["replayed"]) for event in answer["events"]] == [
        ("e1", False),
        ("e2", False),
    ]
    assert answer["events"][1]["hold_status"] == "captured"
    after = OPENING_NANO - FIRST_COST_NANO - SECOND_COST_NANO
    assert assert_ledger_invariants(db, purchase_id) == (after, 0)
    written = _written(db, purchase_id)
    assert written["usage"] == ["e1", "e2"] and written["status"] == "low"
    assert written["outbox"] == [f"status:{purchase_id}:1:notify.email"], "one transition, notified once"

    again = _meter(purchase_id, vendor_key, _batch(hold_id))  # a client retry after the answer was lost

    assert [event["replayed"] for event in json.loads(again["body"])["events"]] == [True, True]
    assert assert_ledger_invariants(db, purchase_id) == (after, 0)


@pytest.mark.parametrize(("times", "status"), [(1, 200), (2, 503)], ids=["retried", "unavailable"])
def test_a_connection_killed_before_the_batch_statement_is_retried_or_refused_whole(
    db: psycopg.Connection[Any], handler_env: None, monkeypatch: pytest.MonkeyPatch, times: int, status: int
) -> None:
    """The one-statement path (no holds): the kill lands between reading the purchase and charging."""
    purchase_id, vendor_key = _funded(db)
    killed = _kill_after(db, monkeypatch, "charge_batch", times=times, before=True)

    response = _meter(purchase_id, vendor_key, _batch())

    assert len(killed) == times
    if status == 503:
        _problem(response, 503)
        assert _written(db, purchase_id) == {"usage": [], "outbox": [], "status": "active"}
        assert assert_ledger_invariants(db, purchase_id) == (OPENING_NANO, 0)
        response = _meter(purchase_id, vendor_key, _batch())
    assert response["statusCode"] == 200, response
    assert [event["replayed"] for event in json.loads(response["body"])["events"]] == [False, False]
    assert assert_ledger_invariants(db, purchase_id) == (OPENING_NANO - FIRST_COST_NANO - SECOND_COST_NANO, 0)
    written = _written(db, purchase_id)
    assert written["usage"] == ["e1", "e2"]
    assert written["outbox"] == [f"status:{purchase_id}:1:notify.email"]


# ------------------------------------------------------------------ statement timeout
def test_a_statement_timeout_on_a_locked_purchase_is_a_503_and_the_retry_charges_once(
    db: psycopg.Connection[Any], database_url: str, handler_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    purchase_id, vendor_key = _funded(db)
    hold_id = _hold(db, purchase_id)
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "300")
    get_database_settings.cache_clear()
    forget_connection()

    with psycopg.connect(database_url) as locker:  # another client holds the purchase row
        locker.execute("SELECT 1 FROM purchases WHERE id = %s FOR UPDATE", (purchase_id,))
        one_statement = _meter(purchase_id, vendor_key, _batch())
        event_by_event = _meter(purchase_id, vendor_key, _batch(hold_id))
        for response in (one_statement, event_by_event):
            problem = _problem(response, 503)
            assert problem["detail"] == "the database did not answer in time; nothing was written"
        assert _written(db, purchase_id) == {"usage": [], "outbox": [], "status": "active"}
        assert assert_ledger_invariants(db, purchase_id) == (OPENING_NANO, HOLD_NANO)
        locker.rollback()  # the lock is released

    retried = _meter(purchase_id, vendor_key, _batch(hold_id))

    assert retried["statusCode"] == 200, retried
    assert [event["replayed"] for event in json.loads(retried["body"])["events"]] == [False, False]
    assert assert_ledger_invariants(db, purchase_id) == (OPENING_NANO - FIRST_COST_NANO - SECOND_COST_NANO, 0)
    written = _written(db, purchase_id)
    assert written["usage"] == ["e1", "e2"]
    assert written["outbox"] == [f"status:{purchase_id}:1:notify.email"]
