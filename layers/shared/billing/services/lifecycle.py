"""The minute sweep of purchases: expired holds, statuses, grace periods.

Each step is one set-based statement per bounded batch, in its own
transaction, claiming rows with ``FOR UPDATE SKIP LOCKED``: two sweeps running
at once split the work instead of repeating it, and a run that is cut short
leaves nothing half done. The status changes write their outbox rows (the
notifications, and the suspend/resume/delete work for provisioning) through
the trigger of migration 0007, in the same statement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from billing.services.ledger import LedgerService
from billing.services.ports import Transactions, UnitOfWork


class PurchaseLifecycle:
    def __init__(
        self, transactions: Transactions, *, batch_size: int = 1_000, max_batches_per_step: int = 100
    ) -> None:
        self._transactions = transactions
        self._ledger = LedgerService(transactions)
        self._batch_size = batch_size
        self._max_batches = max_batches_per_step

    def sweep(self, now: datetime) -> dict[str, int]:
        """Run every step; what a step leaves over its batch budget waits for the next run."""
        return {
            "holds_expired": self._ledger.expire_due_holds(now, batch_size=self._batch_size),
            # before the grace step: a purchase whose balance no longer deserves suspension
            # must be restored, not deleted
            "statuses_corrected": self._in_batches(
                lambda unit: unit.purchases.reevaluate_statuses(self._batch_size)
            ),
            "purchases_terminated": self._in_batches(
                lambda unit: unit.purchases.end_grace_periods(now, self._batch_size)
            ),
        }

    def _in_batches(self, step: Callable[[UnitOfWork], int]) -> int:
        total = 0
        for _ in range(self._max_batches):
            count = self._transactions.run(step)
            total += count
            if count < self._batch_size:
                break
        return total
