"""Over HTTP: authorize a call, settle it with meter-usage, spend the balance down to suspension."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.conftest import Answer, Local


def _post(local: Local, path: str, body: dict[str, Any]) -> Answer:
    return local.request(
        "POST",
        f"/purchase/{local.seed.purchase_id}{path}",
        key=local.seed.vendor_key,
        body=json.dumps(body).encode(),
    )


def test_authorize_then_capture_then_spend_to_suspension(local: Local) -> None:
    opening = local.request("GET", f"/purchase/{local.seed.purchase_id}", key=local.seed.customer_key).json()

    held = _post(local, "/authorize", {"idempotency_key": "call-1", "amount": "1.500000000"})
    assert held.status == 201, held
    hold = held.json()
    assert (hold["held"], hold["replayed"]) == ("1.500000000", False)
    replay = _post(local, "/authorize", {"idempotency_key": "call-1", "amount": "1.500000000"})
    assert (replay.status, replay.json()["hold_id"], replay.json()["replayed"]) == (
        201,
        hold["hold_id"],
        True,
    )

    conflict = _post(local, "/authorize", {"idempotency_key": "call-1", "amount": "2.000000000"})
    assert conflict.status == 409 and conflict.headers["Content-Type"] == "application/problem+json"
    too_much = _post(local, "/authorize", {"idempotency_key": "call-2", "amount": "1000000.000000000"})
    assert too_much.status == 402 and too_much.headers["Content-Type"] == "application/problem+json"
    bad_ttl = _post(local, "/authorize", {"idempotency_key": "call-3", "amount": "1.0", "ttl_seconds": 86400})
    assert bad_ttl.status == 422

    settled = _post(
        local,
        "/meter-usage",
        {
            "idempotency_key": "call-1-usage",
            "usage_amount": "1200",
            "unit": "tokens",
            "cost_incurred": "0.400000000",
            "hold_id": hold["hold_id"],
        },
    )
    assert settled.status == 200, settled
    assert settled.json()["events"][0]["hold_status"] == "captured"
    assert settled.json()["held"] == "0.000000000"

    remaining = settled.json()["balance"]
    spent = _post(
        local,
        "/meter-usage",
        {"idempotency_key": "big-job", "usage_amount": "1", "unit": "job", "cost_incurred": remaining},
    )
    assert spent.status == 200, spent
    assert (spent.json()["status"], spent.json()["allowed"]) == ("suspended", False)
    view = local.request("GET", f"/purchase/{local.seed.purchase_id}", key=local.seed.customer_key).json()
    assert view["status"] == "suspended" and view["grace_until"] is not None
    assert opening["grace_until"] is None

    suspended = _post(local, "/authorize", {"idempotency_key": "call-4", "amount": "0.000000001"})
    assert suspended.status == 402


def test_a_bad_body_is_reported_against_the_form_that_was_sent(local: Local) -> None:
    """One event and a batch are told apart by ``events``: errors name the form sent, and only it."""
    purchase = f"/purchase/{local.seed.purchase_id}"
    opening = local.request("GET", purchase, key=local.seed.customer_key).json()["balance"]

    single = _post(local, "/meter-usage", {"idempotency_key": "e1", "usage_amount": "1", "unit": "t"})
    batch = _post(
        local,
        "/meter-usage",
        {"events": [{"idempotency_key": "e2", "usage_amount": "x", "unit": "t", "cost_incurred": "0.1"}]},
    )

    assert (single.status, batch.status) == (422, 422)
    assert [error["loc"] for error in single.json()["errors"]] == [["body", "event"]]
    assert "exactly one of cost_incurred or meter" in single.json()["errors"][0]["msg"]
    batch_error = ["body", "batch", "events", 0, "usage_amount"]
    assert [error["loc"] for error in batch.json()["errors"]] == [batch_error]
    assert local.request("GET", purchase, key=local.seed.customer_key).json()["balance"] == opening
