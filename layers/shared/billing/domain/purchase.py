"""Purchase facts the ledger foundation needs: statuses, triggers, the public view."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from billing.domain.errors import InvalidRequest


class PurchaseStatus(StrEnum):
    ACTIVE = "active"
    LOW = "low"
    CRITICAL = "critical"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class Triggers:
    """Balance thresholds in nano-USD; low > critical > termination >= 0 (DESIGN §4)."""

    low_nano: int
    critical_nano: int
    termination_nano: int

    def __post_init__(self) -> None:
        if not (self.low_nano > self.critical_nano > self.termination_nano >= 0):
            raise InvalidRequest("triggers must satisfy low > critical > termination >= 0")


@dataclass(frozen=True)
class NewPurchase:
    id: UUID
    offer_id: str
    triggers: Triggers
    customer_key_hash: bytes
    vendor_key_hash: bytes
    wallet_id: UUID | None = None
    officex_purchase_id: str | None = None
    customer_org_id: str | None = None
    customer_user_id: str | None = None
    customer_org_endpoint: str | None = None
    customer_org_api_key_ciphertext: bytes | None = None
    resource: dict[str, Any] = field(default_factory=dict)
    notify_email: str | None = None
    webhook_url: str | None = None
    webhook_secret_ciphertext: bytes | None = None
    #: suspension → termination; the offer's ``grace_period_hours`` at purchase time
    grace_period: timedelta = timedelta(hours=72)


@dataclass(frozen=True)
class PurchaseCredentials:
    customer_key_hash: bytes
    vendor_key_hash: bytes


@dataclass(frozen=True)
class PurchaseView:
    id: UUID
    offer_id: str
    status: PurchaseStatus
    balance_nano: int
    held_nano: int
    triggers: Triggers
    deposit_address: str | None
    deposit_chain_id: int | None
    deposit_token: str | None
    resource: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    grace_until: datetime | None = None
