"""Spend authorizations: reserve funds before an expensive call, settle them with its usage.

A hold is one conditional statement (the Postgres ledger store): it applies
only while ``balance - held`` covers it, under the purchase's row lock, so
concurrent authorizations can never reserve more than the balance. The hold id
is derived from the idempotency key, so a retried authorization is a replay of
the same hold, not a second one. meter-usage with ``hold_id`` captures it; the
sweep releases holds whose TTL ran out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

from billing.domain.api_keys import KeyRole
from billing.domain.errors import InsufficientFunds, NotFound
from billing.domain.ledger import LedgerReceipt, place_hold
from billing.domain.purchase import PurchaseStatus, PurchaseView
from billing.services.ledger import apply_in
from billing.services.ports import Transactions, UnitOfWork
from billing.services.purchases import authenticated_view

DEFAULT_HOLD_TTL = timedelta(minutes=5)
MAX_HOLD_TTL = timedelta(hours=1)
_HOLDING_STATUSES = (PurchaseStatus.ACTIVE, PurchaseStatus.LOW, PurchaseStatus.CRITICAL)


def hold_id_for(purchase_id: UUID, idempotency_key: str) -> UUID:
    """Stable per (purchase, key): the same authorization retried names the same hold."""
    return uuid5(NAMESPACE_URL, f"officex-billing:hold:{purchase_id}:{idempotency_key}")


@dataclass(frozen=True)
class SpendAuthorization:
    idempotency_key: str
    amount_nano: int
    ttl: timedelta = DEFAULT_HOLD_TTL
    description: str | None = None


@dataclass(frozen=True)
class AuthorizedHold:
    hold_id: UUID
    amount_nano: int
    expires_at: datetime
    receipt: LedgerReceipt
    purchase: PurchaseView


class SpendAuthorizations:
    def __init__(
        self, transactions: Transactions, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._transactions = transactions
        self._clock = clock

    def authorize(self, raw_purchase_id: str, vendor_key: str, request: SpendAuthorization) -> AuthorizedHold:
        expires_at = self._clock() + request.ttl

        def hold(unit: UnitOfWork) -> AuthorizedHold:
            before = authenticated_view(unit, raw_purchase_id, vendor_key, KeyRole.VENDOR)
            purchase_id = before.id
            hold_id = hold_id_for(purchase_id, request.idempotency_key)
            if before.status not in _HOLDING_STATUSES and unit.ledger.hold(purchase_id, hold_id) is None:
                raise InsufficientFunds(
                    f"the purchase is {before.status.value}: top up before authorizing spend",
                    extra={"status": before.status.value},
                )
            receipt = apply_in(
                unit,
                place_hold(
                    purchase_id,
                    hold_id,
                    request.amount_nano,
                    expires_at,
                    request.idempotency_key,
                    source="authorize",
                    metadata={
                        "ttl_seconds": int(request.ttl.total_seconds()),
                        "description": request.description,
                    },
                ),
            )
            recorded = unit.ledger.hold(purchase_id, hold_id)
            assert recorded is not None
            return AuthorizedHold(
                hold_id, recorded.amount_nano, recorded.expires_at, receipt, _view(unit, purchase_id)
            )

        return self._transactions.run_single_write(hold)


def _view(unit: UnitOfWork, purchase_id: UUID) -> PurchaseView:
    view = unit.purchases.view(purchase_id)
    if view is None:
        raise NotFound("purchase not found")
    return view
