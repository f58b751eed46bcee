"""Bodies of POST /purchase/{id}/meter-usage."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from billing.api.models import IdempotencyKey, ResponseModel, StrictModel
from billing.domain.money import PositiveUsdAmount, SignedUsdAmount, UsdAmount
from billing.domain.pricing import GeminiUsageMetadata
from billing.domain.purchase import PurchaseStatus
from billing.services.metering import GeminiCall, MeteringOutcome, UsageEvent

MAX_BATCH = 100
Quantity = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}(\.[0-9]{1,9})?$")]  # ASCII digits only
MetadataValue = str | int | bool | None


class GeminiMeter(StrictModel):
    type: Literal["gemini_tokens"]
    model: Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^[a-z0-9][a-z0-9.-]*$")]
    usage_metadata: GeminiUsageMetadata = Field(
        description="The response's usageMetadata, as Gemini returns it"
    )


class UsageEventBody(StrictModel):
    idempotency_key: IdempotencyKey
    usage_amount: Quantity = Field(description="Decimal string, e.g. tokens or bytes")
    unit: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    cost_incurred: PositiveUsdAmount | None = Field(default=None, description="What to charge, USD")
    meter: GeminiMeter | None = Field(default=None, description="Or let the server price the call")
    timestamp: AwareDatetime | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    metadata: dict[Annotated[str, StringConstraints(max_length=64)], MetadataValue] | None = None
    hold_id: UUID | None = Field(
        default=None, description="The authorization (POST …/authorize) this usage settles; the rest is freed"
    )

    def __repr__(self) -> str:
        # Powertools formats the route's arguments into a debug message on every request (see below).
        return f"UsageEventBody(idempotency_key={self.idempotency_key!r})"

    @field_validator("metadata")
    @classmethod
    def _small(cls, metadata: dict[str, MetadataValue] | None) -> dict[str, MetadataValue] | None:
        if metadata is not None and len(metadata) > 20:
            raise ValueError("at most 20 metadata entries")
        return metadata

    @model_validator(mode="after")
    def _one_price(self) -> UsageEventBody:
        if (self.cost_incurred is None) == (self.meter is None):
            raise ValueError("give exactly one of cost_incurred or meter")
        return self

    def to_event(self) -> UsageEvent:
        gemini = GeminiCall(self.meter.model, self.meter.usage_metadata) if self.meter else None
        return UsageEvent(
            idempotency_key=self.idempotency_key,
            usage_amount=Decimal(self.usage_amount),
            unit=self.unit,
            cost_nano=self.cost_incurred,
            gemini=gemini,
            occurred_at=self.timestamp,
            description=self.description,
            metadata=dict(self.metadata) if self.metadata else None,
            hold_id=self.hold_id,
        )


class UsageBatchBody(StrictModel):
    events: list[UsageEventBody] = Field(min_length=1, max_length=MAX_BATCH)

    def __repr__(self) -> str:
        # Powertools formats the route's arguments into a debug message on every request, logged or
        # not: the full repr of 100 events cost 0.5-1 ms per request (docs/benchmarks.md).
        return f"UsageBatchBody(<{len(self.events)} events>)"

    @field_validator("events")
    @classmethod
    def _unique_keys(cls, events: list[UsageEventBody]) -> list[UsageEventBody]:
        keys = [event.idempotency_key for event in events]
        if len(set(keys)) != len(keys):
            raise ValueError("an idempotency_key appears twice in the batch")
        return events


def _body_kind(body: Any) -> str:
    """A body with ``events`` is a batch; anything else is read as one event."""
    if isinstance(body, UsageBatchBody) or (isinstance(body, dict) and "events" in body):
        return "batch"
    return "event"


#: The meter-usage body: one event, or ``{"events": [...]}``. Told apart by the ``events`` key, so a
#: mistake is reported against the form that was sent, not against both.
MeterUsageBody = Annotated[
    Annotated[UsageEventBody, Tag("event")] | Annotated[UsageBatchBody, Tag("batch")],
    Discriminator(_body_kind),
]


class MeteredEventView(ResponseModel):
    idempotency_key: str
    cost: UsdAmount
    entry_id: int
    replayed: bool
    hold_status: Literal["captured", "expired", "released"] | None = Field(
        default=None, description="With hold_id: the hold afterwards (usage is charged even if it had lapsed)"
    )


class MeterUsageResponse(ResponseModel):
    purchase_id: UUID
    status: PurchaseStatus
    allowed: bool = Field(description="false once the purchase must stop being served")
    balance: SignedUsdAmount
    held: UsdAmount
    available: SignedUsdAmount
    charged: UsdAmount = Field(description="Sum charged by this request (replays included)")
    events: list[MeteredEventView]
    checked_at: datetime

    @classmethod
    def of(cls, outcome: MeteringOutcome, checked_at: datetime) -> MeterUsageResponse:
        purchase = outcome.purchase
        return cls.model_construct(
            purchase_id=purchase.id,
            status=purchase.status,
            allowed=outcome.allowed,
            balance=purchase.balance_nano,
            held=purchase.held_nano,
            available=purchase.balance_nano - purchase.held_nano,
            charged=sum(event.cost_nano for event in outcome.events),
            # cost_nano is the view's cost: named explicitly, or pydantic drops it without a word
            events=[
                MeteredEventView.model_construct(**vars(event), cost=event.cost_nano)
                for event in outcome.events
            ],
            checked_at=checked_at,
        )


def events_of(body: UsageEventBody | UsageBatchBody) -> list[UsageEvent]:
    items = body.events if isinstance(body, UsageBatchBody) else [body]
    return [item.to_event() for item in items]
