"""The sweep function on its schedule inputs, and what the handlers write to the log."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from pydantic import ValidationError

from billing.api.observability import logger
from billing.domain import ledger
from local.handlers import LocalLambdaContext, load_handler
from local.template import load_template
from tests.conftest import load_event
from tests.integration.ledger_support import assert_ledger_invariants, ledger_on, new_purchase

TEMPLATE = load_template()


def _invoke(folder: str, event: dict[str, Any]) -> Any:
    function = next(function for function in TEMPLATE.functions if function.folder == folder)
    return load_handler(function)(event, LocalLambdaContext.for_function(function))


def test_sweep_releases_expired_holds_once(db: psycopg.Connection[Any], handler_env: None) -> None:
    purchase_id, _, _ = new_purchase(db)
    service = ledger_on(db)
    service.apply(ledger.credit(purchase_id, 1_000, "opening"))
    now = datetime.now(UTC)
    service.apply(ledger.place_hold(purchase_id, uuid4(), 300, now - timedelta(seconds=5), "stale"))
    service.apply(ledger.place_hold(purchase_id, uuid4(), 200, now + timedelta(hours=1), "live"))

    first = _invoke("sweep", load_event("sweep_holds_and_balances"))
    second = _invoke("sweep", load_event("sweep_holds_and_balances"))

    assert (first["holds_expired"], second["holds_expired"]) == (1, 0)
    assert assert_ledger_invariants(db, purchase_id) == (1_000, 200)


def test_sweep_maintenance_keeps_partitions_ahead(db: psycopg.Connection[Any], handler_env: None) -> None:
    outcome = _invoke("sweep", load_event("sweep_maintenance"))

    assert set(outcome) == {"usage_event_partitions_created"}
    ahead = (datetime.now(UTC).replace(day=1) + timedelta(days=95)).strftime("%Y_%m")
    assert db.execute("SELECT to_regclass(%s) IS NOT NULL", (f"usage_events_{ahead}",)).fetchone() == (True,)


def test_sweep_refuses_an_unknown_job(handler_env: None) -> None:
    with pytest.raises(ValidationError):
        _invoke("sweep", {"job": "drop_everything"})


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything the service logger writes during the test, formatted as in Lambda."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logger.registered_formatter)
    logging.getLogger(logger.name).addHandler(handler)
    yield buffer
    logging.getLogger(logger.name).removeHandler(handler)


def test_logs_carry_the_request_id_and_never_the_key(
    db: psycopg.Connection[Any], handler_env: None, log_lines: io.StringIO
) -> None:
    purchase_id, customer_key, vendor_key = new_purchase(db)
    event = load_event("purchase_get_demo")
    event["pathParameters"] = {"purchase_id": str(purchase_id)}
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/purchase/{purchase_id}"
    event["headers"]["authorization"] = f"Bearer {vendor_key}"  # the wrong key: a refusal is logged

    response = _invoke("purchase_get", event)

    assert response["statusCode"] == 401
    assert response["headers"]["X-Request-Id"] == event["requestContext"]["requestId"]
    everything = log_lines.getvalue()
    records = [json.loads(line) for line in everything.splitlines()]
    refusals = [record for record in records if record.get("message") == "request refused"]
    assert refusals, records
    assert all(record["correlation_id"] == event["requestContext"]["requestId"] for record in refusals)
    assert vendor_key not in everything and customer_key not in everything
