"""Bodies of POST /purchase/{id}/authorize."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated
from uuid import UUID

from pydantic import Field, StringConstraints

from billing.api.models import IdempotencyKey, ResponseModel, StrictModel
from billing.domain.money import PositiveUsdAmount, SignedUsdAmount, UsdAmount
from billing.domain.purchase import PurchaseStatus
from billing.services.holds import DEFAULT_HOLD_TTL, MAX_HOLD_TTL, AuthorizedHold, SpendAuthorization


class AuthorizeBody(StrictModel):
    idempotency_key: IdempotencyKey
    amount: PositiveUsdAmount = Field(description="USD to reserve, e.g. the worst-case cost of the call")
    ttl_seconds: int = Field(
        default=int(DEFAULT_HOLD_TTL.total_seconds()),
        ge=1,
        le=int(MAX_HOLD_TTL.total_seconds()),
        description="Released by the sweep when not captured by meter-usage within this time",
    )
    description: Annotated[str, StringConstraints(max_length=500)] | None = None

    def to_request(self) -> SpendAuthorization:
        return SpendAuthorization(
            idempotency_key=self.idempotency_key,
            amount_nano=self.amount,
            ttl=timedelta(seconds=self.ttl_seconds),
            description=self.description,
        )


class AuthorizeResponse(ResponseModel):
    hold_id: UUID = Field(description="Send it as hold_id with the call's meter-usage event")
    purchase_id: UUID
    amount: UsdAmount
    expires_at: datetime
    replayed: bool
    status: PurchaseStatus
    balance: SignedUsdAmount
    held: UsdAmount
    available: SignedUsdAmount

    @classmethod
    def of(cls, hold: AuthorizedHold) -> AuthorizeResponse:
        purchase = hold.purchase
        return cls.model_construct(
            hold_id=hold.hold_id,
            purchase_id=purchase.id,
            amount=hold.amount_nano,
            expires_at=hold.expires_at,
            replayed=hold.receipt.replayed,
            status=purchase.status,
            balance=purchase.balance_nano,
            held=purchase.held_nano,
            available=purchase.balance_nano - purchase.held_nano,
        )
