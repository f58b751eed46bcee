"""Bodies of the /purchase routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from billing.api.models import ResponseModel
from billing.domain.money import SignedUsdAmount, UsdAmount
from billing.domain.purchase import PurchaseStatus, PurchaseView
from billing.services.purchases import PurchaseDetails


class TriggersBody(ResponseModel):
    low: UsdAmount
    critical: UsdAmount
    termination: UsdAmount


class DepositAddress(ResponseModel):
    address: str
    chain_id: int
    token: str


class PurchaseResponse(ResponseModel):
    purchase_id: UUID
    offer_id: str
    status: PurchaseStatus
    balance: SignedUsdAmount
    held: UsdAmount
    available: SignedUsdAmount
    triggers: TriggersBody
    deposit: DepositAddress | None
    resource: dict[str, Any] = Field(
        description=(
            "The purchase's resource: kind, status (provisioning, active, suspended, deleted), name, "
            "region, endpoint, … and where its credentials are (pending: the next read shows them; shown)"
        )
    )
    resource_credentials: dict[str, str] | None = Field(
        default=None,
        description=(
            "Shown once, by the first read after provisioning finished (e.g. the bucket's access key "
            "id and secret): keep them. Absent afterwards"
        ),
    )
    grace_until: datetime | None = Field(
        description="While suspended: when the resources are deleted unless the balance is topped up"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_details(cls, details: PurchaseDetails) -> PurchaseResponse:
        response = cls.from_view(details.view)
        response.resource_credentials = details.resource_credentials
        return response

    @classmethod
    def from_view(cls, view: PurchaseView) -> PurchaseResponse:
        deposit = None
        if view.deposit_address and view.deposit_chain_id is not None and view.deposit_token:
            deposit = DepositAddress(
                address=view.deposit_address, chain_id=view.deposit_chain_id, token=view.deposit_token
            )
        return cls.model_construct(
            purchase_id=view.id,
            offer_id=view.offer_id,
            status=view.status,
            balance=view.balance_nano,
            held=view.held_nano,
            available=view.balance_nano - view.held_nano,
            triggers=TriggersBody.model_construct(
                low=view.triggers.low_nano,
                critical=view.triggers.critical_nano,
                termination=view.triggers.termination_nano,
            ),
            deposit=deposit,
            resource=view.resource,
            resource_credentials=None,
            grace_until=view.grace_until,
            created_at=view.created_at,
            updated_at=view.updated_at,
        )
