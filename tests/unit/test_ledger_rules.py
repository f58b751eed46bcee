from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from billing.domain import ledger
from billing.domain.errors import IdempotencyConflict, InvalidAmount, InvalidRequest

PURCHASE = uuid4()


def test_debit_is_negative_and_requires_available_funds_by_default() -> None:
    operation = ledger.debit(PURCHASE, 5, "k")
    assert operation.amount_nano == -5
    assert operation.required_available_nano == 5
    assert ledger.debit(PURCHASE, 5, "k", require_available=False).required_available_nano is None


@pytest.mark.parametrize("amount", [0, -1, 10**19])
def test_credit_and_debit_refuse_zero_negative_and_huge(amount: int) -> None:
    with pytest.raises(InvalidAmount):
        ledger.credit(PURCHASE, amount, "k")
    with pytest.raises(InvalidAmount):
        ledger.debit(PURCHASE, amount, "k")


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there"])
def test_idempotency_keys_are_bounded_printable_text(key: str) -> None:
    with pytest.raises(InvalidRequest):
        ledger.credit(PURCHASE, 1, key)


def test_hold_needs_aware_expiry_and_adjustment_needs_reason() -> None:
    with pytest.raises(InvalidRequest):
        ledger.place_hold(PURCHASE, uuid4(), 1, datetime(2030, 1, 1), "k")
    with pytest.raises(InvalidRequest):
        ledger.adjustment(PURCHASE, -1, "k", reason="  ")
    assert ledger.adjustment(PURCHASE, -1, "k", reason="refund").amount_nano == -1


def test_fingerprint_tells_replay_from_reuse() -> None:
    first = ledger.debit(PURCHASE, 5, "k", meter="tokens")
    assert first.fingerprint() == ledger.debit(PURCHASE, 5, "k", meter="tokens").fingerprint()
    assert first.fingerprint() != ledger.debit(PURCHASE, 6, "k", meter="tokens").fingerprint()
    assert first.fingerprint() != ledger.credit(PURCHASE, 5, "k").fingerprint()


def _recorded(operation: ledger.LedgerOperation) -> ledger.LedgerReceipt:
    return ledger.LedgerReceipt(
        entry_id=7,
        purchase_id=PURCHASE,
        kind=operation.kind,
        amount_nano=operation.amount_nano,
        held_delta_nano=0,
        balance_after_nano=95,
        held_after_nano=0,
        fingerprint=operation.fingerprint(),
    )


def test_replay_returns_the_recorded_receipt_marked_replayed() -> None:
    operation = ledger.debit(PURCHASE, 5, "k")
    replay = ledger.replay_or_conflict(operation, _recorded(operation))
    assert replay.replayed and replay.entry_id == 7 and replay.balance_after_nano == 95


def test_same_key_other_request_is_a_conflict() -> None:
    with pytest.raises(IdempotencyConflict):
        ledger.replay_or_conflict(ledger.debit(PURCHASE, 6, "k"), _recorded(ledger.debit(PURCHASE, 5, "k")))


def test_expired_hold_key_is_stable() -> None:
    hold_id = uuid4()
    assert ledger.expired_hold_key(hold_id) == f"hold-expired:{hold_id}"
    expires = datetime.now(UTC) + timedelta(minutes=1)
    assert ledger.place_hold(PURCHASE, hold_id, 1, expires, "k").held_delta_nano == 1
