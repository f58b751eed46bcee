"""Charging a cost-export delivery: restatement-safe differences per charge key (DESIGN §6).

Every delivery of a billing period is month-to-date and complete. For each
(purchase, bucket, usage day, charge kind) the vendor price it implies is
``round_half_even(cost × markup)`` to nano-USD, computed once per key from the
key's total; only the difference from what was already billed for the key is
posted, as a usage debit (up) or an adjustment credit (down). A key billed
before but absent from a newer delivery now costs zero. The idempotency key of
each posting names the delivery, so replaying a delivery can never post twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

from billing.domain.cost_export import ChargeKind, Delivery, UnattributedCost
from billing.domain.ledger import MAX_IDEMPOTENCY_KEY_LENGTH, EntryKind, LedgerOperation, credit, debit
from billing.domain.money import round_usd_to_nano

RESTATEMENT_REASON = "cost export restatement"
LEDGER_SOURCE = "cost-export"
#: Why a cost found no purchase (the reader adds its own reasons, e.g. "not_s3").
UNKNOWN_BUCKET = "unknown_bucket"
AMBIGUOUS_TAG = "ambiguous_purchase_tag"


class DeliveryStatus(StrEnum):
    PROCESSING = "processing"
    APPLIED = "applied"
    SUPERSEDED = "superseded"
    FAILED = "failed"


class OutcomeStatus(StrEnum):
    APPLIED = "applied"  # charged (possibly nothing, if nothing changed)
    ALREADY_APPLIED = "already_applied"  # a duplicate event or a replay: nothing changed
    SUPERSEDED = "superseded"  # a newer delivery of the period is applied: nothing charged
    FAILED = "failed"  # the delivery cannot be read: nothing charged, reason recorded
    DRY_RUN = "dry_run"  # what would be charged; nothing written


@dataclass(frozen=True)
class ManifestObject:
    """A manifest as stored: its bytes and when it was written."""

    body: bytes
    last_modified: datetime


@dataclass(frozen=True)
class RecordedDelivery:
    """A delivery's row: ``status`` is what it was when this process looked."""

    record_id: int
    status: DeliveryStatus
    newly_recorded: bool


@dataclass(frozen=True)
class DeliveryRecord:
    """A delivery as the operator lists it."""

    record_id: int
    report_name: str
    format: str
    billing_period: date
    delivery_id: str
    delivered_at: datetime
    manifest_bucket: str
    manifest_key: str
    status: DeliveryStatus
    reason: str | None
    attempts: int
    rows_read: int | None
    s3_rows: int | None
    charges_changed: int | None
    charged_nano: int
    refunded_nano: int
    unattributed: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class ChargeChange:
    """A key whose AWS cost differs from what was billed for it (absent now = cost 0)."""

    purchase_id: UUID
    offer_id: str
    bucket: str
    usage_day: date
    kind: ChargeKind
    cost: Decimal
    billed_cost: Decimal | None  # None: never billed
    billed_nano: int


@dataclass(frozen=True)
class ChargeRecord:
    """The new state of a charges row once its change is posted."""

    purchase_id: UUID
    bucket: str
    usage_day: date
    kind: ChargeKind
    billed_cost: Decimal
    billed_nano: int


@dataclass
class PurchaseCharges:
    purchase_id: UUID
    charged_nano: int = 0
    refunded_nano: int = 0
    keys: int = 0


@dataclass
class ChargeTotals:
    """What a delivery posted (or, in a dry run, would post)."""

    charges_changed: int = 0
    charged_nano: int = 0
    refunded_nano: int = 0
    by_purchase: dict[UUID, PurchaseCharges] = field(default_factory=dict)

    def add(self, purchase_id: UUID, diff_nano: int) -> None:
        purchase = self.by_purchase.setdefault(purchase_id, PurchaseCharges(purchase_id))
        purchase.keys += 1
        self.charges_changed += 1
        if diff_nano > 0:
            purchase.charged_nano += diff_nano
            self.charged_nano += diff_nano
        elif diff_nano < 0:
            purchase.refunded_nano -= diff_nano
            self.refunded_nano -= diff_nano


@dataclass(frozen=True)
class DeliveryOutcome:
    status: OutcomeStatus
    delivery: Delivery
    record_id: int | None = None
    reason: str | None = None
    rows_read: int | None = None
    s3_rows: int | None = None
    staged_keys: int | None = None
    totals: ChargeTotals = field(default_factory=ChargeTotals)
    unattributed: list[UnattributedCost] = field(default_factory=list)
    #: the buckets carrying most of the unattributed S3 cost (bucket, AWS cost)
    unattributed_buckets: list[tuple[str, Decimal]] = field(default_factory=list)
    #: dry run only: the delivery's recorded status, if it was processed before
    recorded_status: DeliveryStatus | None = None
    #: superseded (or would be, in a dry run): the newer applied delivery's record id
    superseded_by: int | None = None
    #: provisional estimates (docs/usage-estimates.md) of the covered bucket-days given back
    estimates_reversed_nano: int = 0


def vendor_price_nano(cost: Decimal, markup: Decimal) -> int:
    """Cost × markup, exactly, rounded once (half-even) to nano-USD."""
    return round_usd_to_nano(cost * markup)


def charge_idempotency_key(delivery: Delivery, bucket: str, usage_day: date, kind: ChargeKind) -> str:
    """``cost-export:{report}:{period}:{delivery}:{bucket}:{day}:{kind}``; a long tail is hashed.

    Unique per delivery and key, so a delivery posts each key at most once and a
    later delivery's correction of the same key is a new entry.
    """
    key = (
        f"cost-export:{delivery.report_name}:{delivery.billing_period:%Y-%m}:{delivery.delivery_id}:"
        f"{bucket}:{usage_day.isoformat()}:{kind.value}"
    )
    if len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isprintable():
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    head = "".join(character if character.isprintable() else "?" for character in key[:150])
    return f"{head}~{digest}"


def settle_change(
    change: ChargeChange, markup: Decimal, delivery: Delivery
) -> tuple[LedgerOperation | None, ChargeRecord, int]:
    """The ledger operation that brings the key to this delivery's price, and the key's new state.

    Returns ``(operation or None when the price did not move, new charges row, diff_nano)``.
    """
    target_nano = vendor_price_nano(change.cost, markup)
    diff_nano = target_nano - change.billed_nano
    record = ChargeRecord(
        change.purchase_id, change.bucket, change.usage_day, change.kind, change.cost, target_nano
    )
    if diff_nano == 0:
        return None, record, 0
    key = charge_idempotency_key(delivery, change.bucket, change.usage_day, change.kind)
    metadata: dict[str, Any] = {
        "bucket": change.bucket,
        "usage_day": change.usage_day.isoformat(),
        "charge_kind": change.kind.value,
        "aws_cost": str(change.cost),
        "aws_cost_billed_before": str(change.billed_cost) if change.billed_cost is not None else None,
        "markup": str(markup),
        "price_nano": target_nano,
        "report": delivery.report_name,
        "billing_period": delivery.billing_period.isoformat(),
        "delivery_id": delivery.delivery_id,
    }
    if diff_nano > 0:
        operation = debit(
            change.purchase_id,
            diff_nano,
            key,
            require_available=False,  # the usage already happened: record it, the triggers follow
            source=LEDGER_SOURCE,
            meter=f"s3:{change.kind.value}",
            metadata=metadata,
        )
    else:
        operation = credit(
            change.purchase_id,
            -diff_nano,
            key,
            kind=EntryKind.ADJUSTMENT,
            source=LEDGER_SOURCE,
            metadata={"reason": RESTATEMENT_REASON, **metadata},
        )
    return operation, record, diff_nano


def merge_unattributed(*groups: list[UnattributedCost]) -> list[UnattributedCost]:
    """One line per (reason, product): the summary stored on the delivery."""
    merged: dict[tuple[str, str], UnattributedCost] = {}
    for group in groups:
        for item in group:
            seen = merged.get((item.reason, item.product))
            merged[(item.reason, item.product)] = (
                item
                if seen is None
                else UnattributedCost(item.reason, item.product, seen.cost + item.cost, seen.rows + item.rows)
            )
    return sorted(merged.values(), key=lambda item: (item.reason, item.product))


def plain_decimal(value: Decimal) -> str:
    """``0.250000000000000000`` → ``0.25``, never in exponent form."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def unattributed_document(
    items: list[UnattributedCost], unknown_buckets: list[tuple[str, Decimal]] | None = None
) -> list[dict[str, Any]]:
    """The summary as stored on the delivery; unknown buckets are listed under their line."""
    document: list[dict[str, Any]] = []
    for item in items:
        line: dict[str, Any] = {
            "reason": item.reason,
            "product": item.product,
            "cost": plain_decimal(item.cost),
            "rows": item.rows,
        }
        if item.reason == UNKNOWN_BUCKET and unknown_buckets:
            line["top_buckets"] = [
                {"bucket": bucket, "cost": plain_decimal(cost)} for bucket, cost in unknown_buckets
            ]
        document.append(line)
    return document
