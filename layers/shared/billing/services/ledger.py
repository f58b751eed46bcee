"""Applying ledger operations: one atomic, idempotent balance change each."""

from __future__ import annotations

from datetime import datetime

from billing.domain.errors import InsufficientFunds, NotFound, StateConflict
from billing.domain.ledger import EntryKind, LedgerOperation, LedgerReceipt, replay_or_conflict
from billing.services.ports import Transactions, UnitOfWork


def apply_in(unit: UnitOfWork, operation: LedgerOperation) -> LedgerReceipt:
    """Apply ``operation`` inside the caller's unit of work (to combine it with other writes)."""
    receipt = unit.ledger.try_apply(operation)
    if receipt is not None:
        return receipt
    recorded = unit.ledger.find_entry(operation.purchase_id, operation.idempotency_key)
    if recorded is not None:
        return replay_or_conflict(operation, recorded)
    funds = unit.ledger.funds(operation.purchase_id)
    if funds is None:
        raise NotFound("purchase not found")
    if operation.kind is EntryKind.RELEASE:
        assert operation.hold_id is not None
        hold = unit.ledger.hold(operation.purchase_id, operation.hold_id)
        if hold is None:
            raise NotFound("hold not found")
        raise StateConflict(f"hold is already {hold.status}")
    required = operation.required_available_nano
    if required is not None and funds.available_nano < required:
        raise InsufficientFunds(
            "available balance does not cover this amount",
            extra={"available_nano": funds.available_nano, "required_nano": required},
        )
    raise StateConflict("the ledger changed while applying this operation; retry")


class LedgerService:
    def __init__(self, transactions: Transactions) -> None:
        self._transactions = transactions

    def apply(self, operation: LedgerOperation) -> LedgerReceipt:
        """One operation is one statement (see the Postgres ledger store): atomic without BEGIN/COMMIT."""
        return self._transactions.run_single_write(lambda unit: apply_in(unit, operation))

    def expire_due_holds(self, now: datetime, *, batch_size: int = 500) -> int:
        """Release holds past their TTL in bounded batches; safe to run concurrently."""
        released = 0
        while True:
            count = self._transactions.run(lambda unit: unit.ledger.expire_due_holds(now, batch_size))
            released += count
            if count < batch_size:
                return released
