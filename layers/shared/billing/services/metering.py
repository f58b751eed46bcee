"""Metering usage against a purchase's prepaid balance: each event charged exactly once.

A batch is one transaction: every event's ledger debit and usage row commit
together, or none do. An event's idempotency key makes a retry a replay (same
body) or a 409 (different body), so a retry storm charges each event once.
Usage that already happened is recorded even if it overdraws; the answer's
``allowed`` tells the vendor's server whether to keep serving.

A request is one call of the usage store's ``charge_batch`` (Postgres: one
statement, migration 0013), which checks the vendor key's hash, writes every
event and returns the purchase afterwards; only events the server prices
(Gemini) read the purchase first, for its offer. Events that settle a hold take
the event-by-event path (``meter_each``) inside an explicit transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from billing.domain.api_keys import KeyRole, hash_api_key
from billing.domain.catalog import GeminiPricing, Offer
from billing.domain.errors import SAME_FOR_EVERY_AUTH_FAILURE, InvalidRequest, Unauthorized
from billing.domain.ledger import debit, release_hold
from billing.domain.pricing import GeminiUsageMetadata, price_gemini_call
from billing.domain.purchase import PurchaseStatus, PurchaseView
from billing.domain.usage_charges import UsageCharge
from billing.services.ledger import apply_in
from billing.services.ports import Transactions, UnitOfWork
from billing.services.purchases import authenticated_view, parse_purchase_id

BACKDATING_WINDOW = timedelta(days=35)
FUTURE_SKEW = timedelta(minutes=5)
_SERVING_STATUSES = (PurchaseStatus.ACTIVE, PurchaseStatus.LOW, PurchaseStatus.CRITICAL)


@dataclass(frozen=True)
class GeminiCall:
    model: str
    usage: GeminiUsageMetadata


@dataclass(frozen=True)
class UsageEvent:
    idempotency_key: str
    usage_amount: Decimal
    unit: str
    cost_nano: int | None = None  # an explicit charge, or…
    gemini: GeminiCall | None = None  # …a call the server prices from the offer
    occurred_at: datetime | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    hold_id: UUID | None = None  # an authorization this usage settles


@dataclass(frozen=True)
class MeteredEvent:
    idempotency_key: str
    cost_nano: int
    entry_id: int
    replayed: bool
    #: with ``hold_id``: the hold's state after this event ("captured", or "expired"/"released"
    #: when it was no longer active: the usage is charged all the same)
    hold_status: str | None = None


@dataclass(frozen=True)
class MeteringOutcome:
    purchase: PurchaseView
    events: list[MeteredEvent]

    @property
    def allowed(self) -> bool:
        """Keep serving: the purchase is not suspended and its balance is above termination."""
        return (
            self.purchase.status in _SERVING_STATUSES
            and self.purchase.balance_nano > self.purchase.triggers.termination_nano
        )


class MeteringService:
    def __init__(
        self, transactions: Transactions, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._transactions = transactions
        self._clock = clock

    def meter(self, raw_purchase_id: str, vendor_key: str, events: list[UsageEvent]) -> MeteringOutcome:
        if any(event.hold_id for event in events):
            return self.meter_each(raw_purchase_id, vendor_key, events)
        now = self._clock()
        return self._transactions.run_single_write(
            lambda unit: self._charge_at_once(unit, raw_purchase_id, vendor_key, events, now)
        )

    def meter_each(self, raw_purchase_id: str, vendor_key: str, events: list[UsageEvent]) -> MeteringOutcome:
        """Event by event in one explicit transaction: the path of events that settle a hold.

        ``meter`` charges other requests in one statement; tests hold it to this path.
        """
        now = self._clock()

        def charge(unit: UnitOfWork) -> MeteringOutcome:
            purchase = authenticated_view(unit, raw_purchase_id, vendor_key, KeyRole.VENDOR)
            priced = any(event.gemini for event in events)
            offer = unit.catalog.offer(purchase.offer_id) if priced else None  # once per request
            metered = [self._charge_one(unit, purchase, event, now, offer) for event in events]
            after = unit.purchases.view(purchase.id)
            assert after is not None
            return MeteringOutcome(after, metered)

        return self._transactions.run(charge)

    def _charge_at_once(
        self, unit: UnitOfWork, raw_purchase_id: str, vendor_key: str, events: list[UsageEvent], now: datetime
    ) -> MeteringOutcome:
        """One writing statement, which also checks the key; a read first only to price events."""
        key_hash = hash_api_key(vendor_key)
        purchase_id = parse_purchase_id(raw_purchase_id)
        if purchase_id is None:
            raise Unauthorized(SAME_FOR_EVERY_AUTH_FAILURE)
        offer = None
        if any(event.gemini for event in events):  # key checked here too: nothing priced for a stranger
            offer = unit.catalog.offer(
                authenticated_view(unit, raw_purchase_id, vendor_key, KeyRole.VENDOR).offer_id
            )
        charges = [_usage_charge(purchase_id, event, now, offer) for event in events]
        batch = unit.usage.charge_batch(purchase_id, key_hash, charges)
        metered = [
            MeteredEvent(event.idempotency_key, -entry.amount_nano, entry.entry_id, entry.replayed)
            for event, entry in zip(events, batch.entries, strict=True)
        ]
        return MeteringOutcome(batch.purchase, metered)

    def _charge_one(
        self,
        unit: UnitOfWork,
        purchase: PurchaseView,
        event: UsageEvent,
        now: datetime,
        offer: Offer | None,
    ) -> MeteredEvent:
        charge = _usage_charge(purchase.id, event, now, offer)
        if event.hold_id is not None and unit.ledger.hold(purchase.id, event.hold_id) is None:
            raise InvalidRequest(f"event {event.idempotency_key!r}: no hold {event.hold_id} on this purchase")
        operation = charge.operation
        receipt = apply_in(unit, operation)
        if not receipt.replayed:
            assert (
                operation.meter is not None and operation.quantity is not None and operation.unit is not None
            )
            unit.usage.record(
                purchase_id=purchase.id,
                occurred_at=charge.occurred_at,
                idempotency_key=event.idempotency_key,
                ledger_entry_id=receipt.entry_id,
                meter=operation.meter,
                quantity=operation.quantity,
                unit=operation.unit,
                cost_nano=charge.cost_nano,
                description=charge.description,
                metadata=charge.usage_metadata,
            )
        hold_status = self._settle_hold(unit, purchase, event.hold_id) if event.hold_id else None
        return MeteredEvent(
            event.idempotency_key, -receipt.amount_nano, receipt.entry_id, receipt.replayed, hold_status
        )

    @staticmethod
    def _settle_hold(unit: UnitOfWork, purchase: PurchaseView, hold_id: UUID) -> str:
        """Free the authorization the usage was charged against; the charge itself stands alone."""
        hold = unit.ledger.hold(purchase.id, hold_id)
        assert hold is not None
        if hold.status == "active":
            capture = release_hold(
                purchase.id, hold_id, f"capture:{hold_id}", captured=True, source="meter-usage"
            )
            apply_in(unit, capture)
            return "captured"
        return hold.status


def _usage_charge(purchase_id: UUID, event: UsageEvent, now: datetime, offer: Offer | None) -> UsageCharge:
    """Check and price one event, and build its debit; nothing is written."""
    occurred_at = event.occurred_at or now
    if not now - BACKDATING_WINDOW <= occurred_at <= now + FUTURE_SKEW:
        skew_minutes = int(FUTURE_SKEW.total_seconds() // 60)
        raise InvalidRequest(
            f"event {event.idempotency_key!r}: timestamp must be within the last "
            f"{BACKDATING_WINDOW.days} days and at most {skew_minutes} minutes ahead"
        )
    meter, cost_nano, priced = _cost(event, offer)
    # Only what the client sent defines the request: a retry without a timestamp is still a replay.
    metadata = {
        "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
        "description": event.description,
        **({"hold_id": str(event.hold_id)} if event.hold_id else {}),
        **priced,
        **(event.metadata or {}),
    }
    operation = debit(
        purchase_id,
        cost_nano,
        event.idempotency_key,
        require_available=False,  # the usage already happened: record it, then stop serving
        source="meter-usage",
        meter=meter,
        quantity=str(event.usage_amount),
        unit=event.unit,
        metadata=metadata,
    )
    return UsageCharge(operation, occurred_at, cost_nano, event.description, event.metadata or {})


def _cost(event: UsageEvent, offer: Offer | None) -> tuple[str, int, dict[str, Any]]:
    if event.cost_nano is not None:
        return "explicit", event.cost_nano, {}
    assert event.gemini is not None
    if offer is None or not isinstance(offer.pricing, GeminiPricing):
        raise InvalidRequest("this purchase's offer does not price Gemini calls; send cost_incurred")
    priced = price_gemini_call(offer.pricing, event.gemini.model, event.gemini.usage)
    if priced.cost_nano <= 0:
        raise InvalidRequest(f"event {event.idempotency_key!r}: the call has no billable tokens")
    details = {
        "model": event.gemini.model,
        "usage_metadata": event.gemini.usage.model_dump(by_alias=True),
        "prices_as_of": offer.pricing.prices_as_of.isoformat(),
        "markup": str(offer.pricing.markup),
        "long_context": priced.long_context,
    }
    return f"gemini:{event.gemini.model}", priced.cost_nano, details
