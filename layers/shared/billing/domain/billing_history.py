"""Historical billing rules: the time grid of a report, its bounds, and how its buckets add up.

Pure: no database, no clock. A report covers the half-open range ``[start, end)``
in UTC, cut into buckets of one interval on a fixed grid (hours and days from
midnight UTC, weeks from Monday 00:00 UTC, calendar months). The first and last
bucket are clipped to the range, so the report's totals are exactly the
ledger's sums over ``[start, end)``.

Money columns come from ledger entries that change the balance, by the time
they were recorded (``at``). For every bucket::

    opening_balance + deposits - usage_cost + adjustments == closing_balance

and each bucket opens with the previous bucket's closing balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from uuid import UUID


class BillingInterval(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


#: At most this many buckets per report (the range is refused otherwise).
MAX_BUCKETS = 1_000
#: No report starts earlier than this.
EARLIEST_START = datetime(2020, 1, 1, tzinfo=UTC)
#: A report may end at most this far ahead of now (buckets after now are empty).
LATEST_AHEAD = timedelta(days=366)
#: Origin of the fixed-width grid: a Monday, midnight UTC (weeks start on Mondays).
GRID_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
#: Buckets in a report without ``start``: the last 24 hours, 30 days, 12 weeks, 12 months.
DEFAULT_BUCKETS = {
    BillingInterval.HOUR: 24,
    BillingInterval.DAY: 30,
    BillingInterval.WEEK: 12,
    BillingInterval.MONTH: 12,
}
#: Postgres stores microseconds: the last instant before ``end`` is ``end - RESOLUTION``.
RESOLUTION = timedelta(microseconds=1)

_FIXED_WIDTH = {
    BillingInterval.HOUR: timedelta(hours=1),
    BillingInterval.DAY: timedelta(days=1),
    BillingInterval.WEEK: timedelta(weeks=1),
}


class InvalidBillingRange(ValueError):
    """The requested range or interval breaks a bound; the message says which."""


def bucket_start(interval: BillingInterval, at: datetime) -> datetime:
    """Start (UTC) of the grid bucket that contains ``at``."""
    at = at.astimezone(UTC)
    if interval is BillingInterval.MONTH:
        return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    width = _FIXED_WIDTH[interval]
    return GRID_ORIGIN + ((at - GRID_ORIGIN) // width) * width


def shift_buckets(interval: BillingInterval, start: datetime, buckets: int) -> datetime:
    """The grid start ``buckets`` buckets after (or, if negative, before) the grid start ``start``."""
    if interval is BillingInterval.MONTH:
        year, month_index = divmod(start.year * 12 + start.month - 1 + buckets, 12)
        return start.replace(year=year, month=month_index + 1)
    return start + buckets * _FIXED_WIDTH[interval]


def bucket_count(interval: BillingInterval, start: datetime, end: datetime) -> int:
    """How many grid buckets ``[start, end)`` touches (``start < end``)."""
    first = bucket_start(interval, start)
    last = bucket_start(interval, end - RESOLUTION)
    if interval is BillingInterval.MONTH:
        return (last.year - first.year) * 12 + last.month - first.month + 1
    return (last - first) // _FIXED_WIDTH[interval] + 1


@dataclass(frozen=True)
class BillingPeriod:
    """A validated report range: ``[start, end)`` in UTC, cut by ``interval``."""

    interval: BillingInterval
    start: datetime
    end: datetime

    @property
    def bucket_count(self) -> int:
        return bucket_count(self.interval, self.start, self.end)


def resolve_period(
    interval: BillingInterval, start: datetime | None, end: datetime | None, now: datetime
) -> BillingPeriod:
    """Apply the defaults and the bounds; :class:`InvalidBillingRange` names what is wrong.

    ``end`` defaults to ``now``; ``start`` to the grid start ``DEFAULT_BUCKETS - 1``
    buckets before the bucket holding the end (so the default report has that many
    buckets, the first one whole), but not before ``EARLIEST_START``.
    """
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.utcoffset() is None:
            raise InvalidBillingRange(f"{name} must carry a time zone, e.g. 2025-01-31T00:00:00Z")
    # Bounds first, compared as given: converting year 1 or 9999 to UTC could overflow.
    end_at = end if end is not None else now
    if end_at <= EARLIEST_START:
        raise InvalidBillingRange(f"end must be after {EARLIEST_START.isoformat()}")
    if end_at > now + LATEST_AHEAD:
        raise InvalidBillingRange(f"end must be at most {LATEST_AHEAD.days} days ahead")
    if start is not None and start < EARLIEST_START:
        raise InvalidBillingRange(f"start must not be before {EARLIEST_START.isoformat()}")
    end_at = end_at.astimezone(UTC)
    if start is None:
        last = bucket_start(interval, end_at - RESOLUTION)
        start_at = max(shift_buckets(interval, last, 1 - DEFAULT_BUCKETS[interval]), EARLIEST_START)
    else:
        start_at = start.astimezone(UTC)
    if start_at >= end_at:
        raise InvalidBillingRange("start must be before end")
    count = bucket_count(interval, start_at, end_at)
    if count > MAX_BUCKETS:
        raise InvalidBillingRange(
            f"the range spans {count} {interval.value} buckets; at most {MAX_BUCKETS} per request: "
            "shorten the range or use a longer interval"
        )
    return BillingPeriod(interval, start_at, end_at)


# ------------------------------------------------------------------ what the ledger shows


@dataclass(frozen=True)
class MeterUsage:
    """Usage entries of one meter and unit: summed quantity and cost."""

    meter: str | None
    unit: str | None
    quantity: Decimal | None  # None when no entry recorded a quantity
    cost_nano: int


@dataclass(frozen=True)
class BucketActivity:
    """The balance-changing ledger entries of one grid bucket, as the store sums them."""

    start: datetime  # the grid bucket's edges, not clipped to the range
    end: datetime
    entries: int
    usage_cost_nano: int  # Σ −amount of usage entries
    deposits_nano: int  # Σ amount of deposit entries
    adjustments_nano: int  # Σ amount of adjustment and reversal entries (signed)
    last_balance_nano: int | None  # balance after the bucket's last entry; None without entries
    usage: tuple[MeterUsage, ...] = ()  # per meter and unit, when grouped by meter


@dataclass(frozen=True)
class LedgerHistory:
    opening_balance_nano: int  # balance after the last entry before the range (0 if none)
    buckets: Sequence[BucketActivity]  # every grid bucket of the range, in order


# ------------------------------------------------------------------ the report


@dataclass(frozen=True)
class BillingBucket:
    start: datetime
    end: datetime
    opening_balance_nano: int
    usage_cost_nano: int
    deposits_nano: int
    adjustments_nano: int
    closing_balance_nano: int
    entries: int
    usage: tuple[MeterUsage, ...] | None  # None unless grouped by meter


@dataclass(frozen=True)
class BillingReport:
    purchase_id: UUID
    period: BillingPeriod
    by_meter: bool
    buckets: tuple[BillingBucket, ...]
    totals: BillingBucket  # the whole range as one bucket


def _meter_order(usage: MeterUsage) -> tuple[bool, str, bool, str]:
    return (usage.meter is None, usage.meter or "", usage.unit is None, usage.unit or "")


def merge_meter_usage(usages: Iterable[MeterUsage]) -> tuple[MeterUsage, ...]:
    """Sum quantities and costs per (meter, unit), ordered by meter then unit."""
    merged: dict[tuple[str | None, str | None], MeterUsage] = {}
    for usage in usages:
        key = (usage.meter, usage.unit)
        seen = merged.get(key)
        if seen is None:
            merged[key] = usage
            continue
        quantity = seen.quantity
        if usage.quantity is not None:
            quantity = usage.quantity if quantity is None else quantity + usage.quantity
        merged[key] = MeterUsage(usage.meter, usage.unit, quantity, seen.cost_nano + usage.cost_nano)
    return tuple(sorted(merged.values(), key=_meter_order))


def build_report(
    purchase_id: UUID, period: BillingPeriod, history: LedgerHistory, *, by_meter: bool
) -> BillingReport:
    """Clip the grid to the range and carry the balance through buckets without entries."""
    if len(history.buckets) != period.bucket_count:
        raise RuntimeError(
            f"the store returned {len(history.buckets)} buckets, the grid has {period.bucket_count}"
        )
    buckets = []
    balance_nano = history.opening_balance_nano
    for activity in history.buckets:
        opening_nano = balance_nano
        if activity.last_balance_nano is not None:
            balance_nano = activity.last_balance_nano
        buckets.append(
            BillingBucket(
                start=max(activity.start, period.start),
                end=min(activity.end, period.end),
                opening_balance_nano=opening_nano,
                usage_cost_nano=activity.usage_cost_nano,
                deposits_nano=activity.deposits_nano,
                adjustments_nano=activity.adjustments_nano,
                closing_balance_nano=balance_nano,
                entries=activity.entries,
                usage=merge_meter_usage(activity.usage) if by_meter else None,
            )
        )
    totals = BillingBucket(
        start=period.start,
        end=period.end,
        opening_balance_nano=history.opening_balance_nano,
        usage_cost_nano=sum(bucket.usage_cost_nano for bucket in buckets),
        deposits_nano=sum(bucket.deposits_nano for bucket in buckets),
        adjustments_nano=sum(bucket.adjustments_nano for bucket in buckets),
        closing_balance_nano=balance_nano,
        entries=sum(bucket.entries for bucket in buckets),
        usage=merge_meter_usage(usage for bucket in buckets for usage in bucket.usage or ())
        if by_meter
        else None,
    )
    return BillingReport(purchase_id, period, by_meter, tuple(buckets), totals)
