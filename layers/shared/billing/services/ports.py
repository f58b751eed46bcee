"""The small interfaces services need from adapters; Postgres and fakes implement them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVar
from uuid import UUID

from billing.domain.ledger import Funds, LedgerOperation, LedgerReceipt
from billing.domain.purchase import NewPurchase, PurchaseCredentials, PurchaseView

T = TypeVar("T")


class LedgerStore(Protocol):
    def try_apply(self, operation: LedgerOperation) -> LedgerReceipt | None: ...
    def find_entry(self, purchase_id: UUID, idempotency_key: str) -> LedgerReceipt | None: ...
    def funds(self, purchase_id: UUID) -> Funds | None: ...
    def hold_status(self, purchase_id: UUID, hold_id: UUID) -> str | None: ...
    def expire_due_holds(self, now: datetime, limit: int) -> int: ...


class PurchaseStore(Protocol):
    def insert(self, purchase: NewPurchase) -> None: ...
    def credentials(self, purchase_id: UUID) -> PurchaseCredentials | None: ...
    def view(self, purchase_id: UUID) -> PurchaseView | None: ...


class UnitOfWork(Protocol):
    @property
    def ledger(self) -> LedgerStore: ...
    @property
    def purchases(self) -> PurchaseStore: ...


class Transactions(Protocol):
    """Runs a unit of work atomically: all of its writes commit, or none do."""

    def run(self, work: Callable[[UnitOfWork], T]) -> T: ...
