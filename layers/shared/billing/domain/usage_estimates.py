"""Provisional S3 charges from CloudWatch metrics, before the cost export bills them (pure).

Estimates are cumulative per (purchase, bucket, usage day, charge kind): each run prices the
day's usage measured so far with the offer's dated list prices × markup, rounded once, and
only the part above what was already estimated is posted (``estimate`` ledger entries). The
cost export later reverses every estimate of a bucket and day it bills
(docs/usage-estimates.md).

Pricing (the catalog's ``S3UnitPrices``):

- storage: per storage type, the day's ``BucketSizeBytes`` in GiB × the class's GB-month
  price ÷ the days of that month; a type whose class has no price uses ``STANDARD`` (or the
  dearest listed class);
- requests: ``GetRequests`` × ``get_per_1k`` / 1000 + (``PutRequests`` + every other request,
  ``AllRequests − GetRequests − PutRequests``) × ``put_per_1k`` / 1000: DELETE (free) and HEAD
  (priced like GET) are charged at the PUT price, so the estimate errs high;
- data transfer: ``BytesDownloaded`` in GiB × ``transfer_out_per_gb``: in-region and
  CloudFront downloads (free or cheaper) and the monthly free tier are charged too, so the
  estimate errs high.
"""

from __future__ import annotations

import calendar
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from billing.domain.catalog import S3Pricing
from billing.domain.cost_export import ChargeKind
from billing.domain.ledger import MAX_IDEMPOTENCY_KEY_LENGTH, EntryKind, LedgerOperation, credit, estimate
from billing.domain.money import round_usd_to_nano

LEDGER_SOURCE = "usage-estimator"
REVERSAL_SOURCE = "estimate-reversal"
REVERSAL_REASON = "estimate replaced by the cost export"
BYTES_PER_GIB = Decimal(1024**3)
ESTIMATED_KINDS = (ChargeKind.STORAGE, ChargeKind.REQUESTS, ChargeKind.DATA_TRANSFER)

#: CloudWatch ``StorageType`` of ``BucketSizeBytes`` → the catalog's storage class.
STORAGE_CLASS_OF_TYPE: dict[str, str] = {
    "StandardStorage": "STANDARD",
    "StandardIAStorage": "STANDARD_IA",
    "OneZoneIAStorage": "ONEZONE_IA",
    "ReducedRedundancyStorage": "REDUCED_REDUNDANCY",
    "IntelligentTieringFAStorage": "INTELLIGENT_TIERING",
    "IntelligentTieringIAStorage": "INTELLIGENT_TIERING",
    "IntelligentTieringAIAStorage": "INTELLIGENT_TIERING",
    "GlacierInstantRetrievalStorage": "GLACIER_IR",
    "GlacierStorage": "GLACIER",
    "DeepArchiveStorage": "DEEP_ARCHIVE",
}
STORAGE_TYPES = tuple(STORAGE_CLASS_OF_TYPE)


@dataclass(frozen=True)
class BucketRef:
    """A provisioned bucket the estimator reads metrics for."""

    purchase_id: UUID
    offer_id: str
    bucket: str
    region: str


@dataclass
class DayUsage:
    """What CloudWatch reported for one bucket and UTC day; ``None`` = no datapoint (yet)."""

    #: storage type → the day's BucketSizeBytes (the newest datapoint of the day)
    storage_bytes: dict[str, Decimal] = field(default_factory=dict)
    objects: Decimal | None = None
    all_requests: Decimal | None = None
    get_requests: Decimal | None = None
    put_requests: Decimal | None = None
    bytes_downloaded: Decimal | None = None


@dataclass
class UsageReadout:
    """What the metrics said: bucket → UTC day → usage; and the buckets that could not be read (why)."""

    usage: dict[str, dict[date, DayUsage]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    """The day's estimated price so far for one charge kind."""

    kind: ChargeKind
    price_nano: int
    cost: Decimal  # list price before markup, exact
    quantity: Decimal
    unit: str
    detail: dict[str, str]


def window_end_of(now: datetime, period: timedelta) -> datetime:
    """The end of the estimator window ``now`` falls in: ``now`` floored to the period (UTC)."""
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
    seconds = int(period.total_seconds())
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def days_to_estimate(window_end: datetime, lookback_days: int) -> list[date]:
    """The UTC days a run looks at: the window's day (if begun) and ``lookback_days − 1`` before."""
    last = (window_end - timedelta(microseconds=1)).astimezone(UTC).date()
    return [last - timedelta(days=back) for back in range(lookback_days - 1, -1, -1)]


def _storage_price(pricing: S3Pricing, storage_type: str) -> Decimal:
    prices = pricing.unit_prices.storage_gb_month
    storage_class = STORAGE_CLASS_OF_TYPE.get(storage_type, "STANDARD")
    if storage_class in prices:
        return prices[storage_class]
    return prices.get("STANDARD", max(prices.values()))


def price_day(usage: DayUsage, usage_day: date, pricing: S3Pricing) -> list[Estimate]:
    """The day's estimates, one per charge kind that has datapoints; exact cost, rounded once."""
    prices = pricing.unit_prices
    estimates: list[Estimate] = []
    if usage.storage_bytes:
        days_in_month = calendar.monthrange(usage_day.year, usage_day.month)[1]
        cost = Decimal(0)
        gib_days = Decimal(0)
        detail: dict[str, str] = {}
        for storage_type, size in sorted(usage.storage_bytes.items()):
            gib = size / BYTES_PER_GIB
            cost += gib * _storage_price(pricing, storage_type) / days_in_month
            gib_days += gib
            detail[storage_type] = str(size)
        if usage.objects is not None:
            detail["objects"] = str(usage.objects)
        estimates.append(
            _estimate(ChargeKind.STORAGE, cost, gib_days, "GiB-day", pricing=pricing, detail=detail)
        )
    if any(value is not None for value in (usage.all_requests, usage.get_requests, usage.put_requests)):
        gets = usage.get_requests or Decimal(0)
        puts = usage.put_requests or Decimal(0)
        others = max((usage.all_requests or Decimal(0)) - gets - puts, Decimal(0))
        cost = gets * prices.get_per_1k / 1000 + (puts + others) * prices.put_per_1k / 1000
        detail = {"get": str(gets), "put": str(puts), "other": str(others)}
        estimates.append(
            _estimate(
                ChargeKind.REQUESTS, cost, gets + puts + others, "requests", pricing=pricing, detail=detail
            )
        )
    if usage.bytes_downloaded is not None:
        cost = usage.bytes_downloaded / BYTES_PER_GIB * prices.transfer_out_per_gb
        detail = {"bytes_downloaded": str(usage.bytes_downloaded)}
        estimates.append(
            _estimate(
                ChargeKind.DATA_TRANSFER,
                cost,
                usage.bytes_downloaded,
                "bytes",
                pricing=pricing,
                detail=detail,
            )
        )
    return estimates


def _estimate(
    kind: ChargeKind,
    cost: Decimal,
    quantity: Decimal,
    unit: str,
    *,
    pricing: S3Pricing,
    detail: dict[str, str],
) -> Estimate:
    return Estimate(kind, round_usd_to_nano(cost * pricing.markup), cost, quantity, unit, detail)


def estimate_posting_nano(estimated_before_nano: int, price_nano: int) -> int:
    """What to post now: the rise above what was estimated; estimates never go down before the export."""
    return max(price_nano - estimated_before_nano, 0)


def _bounded_key(key: str) -> str:
    if len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isprintable():
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    head = "".join(character if character.isprintable() else "?" for character in key[:150])
    return f"{head}~{digest}"


def estimate_idempotency_key(bucket: str, usage_day: date, kind: ChargeKind, window_end: datetime) -> str:
    """``estimate:{bucket}:{day}:{kind}:{window end}``: one posting per key and estimator window."""
    return _bounded_key(
        f"estimate:{bucket}:{usage_day.isoformat()}:{kind.value}:{window_end.astimezone(UTC):%Y-%m-%dT%H:%MZ}"
    )


def reversal_idempotency_key(delivery_record_id: int, bucket: str, usage_day: date, kind: ChargeKind) -> str:
    """``estimate-reversal:{delivery}:{bucket}:{day}:{kind}``; ``0`` = reversed by the estimator itself."""
    return _bounded_key(
        f"estimate-reversal:{delivery_record_id}:{bucket}:{usage_day.isoformat()}:{kind.value}"
    )


def estimate_operation(
    ref: BucketRef,
    usage_day: date,
    item: Estimate,
    *,
    amount_nano: int,
    window_end: datetime,
    pricing: S3Pricing,
) -> LedgerOperation:
    """The ledger debit of kind ``estimate`` that raises the key's estimate by ``amount_nano``."""
    metadata: dict[str, Any] = {
        "bucket": ref.bucket,
        "usage_day": usage_day.isoformat(),
        "charge_kind": item.kind.value,
        "list_cost": str(item.cost),
        "markup": str(pricing.markup),
        "prices_as_of": pricing.prices_as_of.isoformat(),
        "price_nano": item.price_nano,
        "window_end": window_end.astimezone(UTC).isoformat(),
        "measured": item.detail,
    }
    return estimate(
        ref.purchase_id,
        amount_nano,
        estimate_idempotency_key(ref.bucket, usage_day, item.kind, window_end),
        source=LEDGER_SOURCE,
        meter=f"s3:{item.kind.value}",
        quantity=str(item.quantity),
        unit=item.unit,
        metadata=metadata,
    )


@dataclass(frozen=True)
class SettledEstimate:
    """An estimate the cost export replaced: its whole amount is given back."""

    purchase_id: UUID
    bucket: str
    usage_day: date
    kind: ChargeKind
    estimated_nano: int


def reversal_operation(settled: SettledEstimate, delivery_record_id: int) -> LedgerOperation | None:
    """The credit (kind ``reversal``) that takes a settled estimate back; ``None`` if it was zero."""
    if settled.estimated_nano == 0:
        return None
    return credit(
        settled.purchase_id,
        settled.estimated_nano,
        reversal_idempotency_key(delivery_record_id, settled.bucket, settled.usage_day, settled.kind),
        kind=EntryKind.REVERSAL,
        source=REVERSAL_SOURCE,
        metadata={
            "reason": REVERSAL_REASON,
            "bucket": settled.bucket,
            "usage_day": settled.usage_day.isoformat(),
            "charge_kind": settled.kind.value,
            "delivery_record_id": delivery_record_id,
        },
    )


@dataclass(frozen=True)
class EstimateState:
    """A key's ``usage_estimates`` row as the estimator found it (row locked)."""

    estimated_nano: int
    last_window_end: datetime | None
    settled: bool
    #: the cost export already billed this bucket and day (any charge kind)
    covered_by_export: bool


@dataclass(frozen=True)
class UnsettledEstimate:
    """An estimate no cost export has replaced yet (the operator report)."""

    purchase_id: UUID
    bucket: str
    usage_day: date
    kind: ChargeKind
    estimated_nano: int
    quantity: Decimal
    last_window_end: datetime | None
    age_days: int
