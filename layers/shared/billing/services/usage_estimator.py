"""Provisional S3 charges from CloudWatch, every estimator window (docs/usage-estimates.md).

A run belongs to one **window**: the schedule time floored to the period (15 minutes). It

1. lists the provisioned buckets (deleted ones while their last days are in the lookback);
2. reads their metrics once, outside any transaction, from the lookback's first day 00:00 UTC
   to the window's end (``UsageMetrics``); buckets whose metrics cannot be read are skipped;
3. per purchase, in one transaction (purchase row locked first): for every (bucket, day, kind)
   with datapoints, prices the day so far (``price_day``) and posts the rise above what was
   estimated before as an ``estimate`` debit through the ledger (idempotency key naming the
   window), so the status triggers act on it like on any charge.

A key the run's window already looked at is left alone (a rerun charges nothing); a key whose
bucket and day the cost export billed is never estimated again (and an estimate that slipped in
beside such a bill is reversed here). Missing datapoints change nothing; late ones are caught up
by the next window, whose cumulative total includes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Protocol

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field

from billing.domain.catalog import S3Pricing
from billing.domain.usage_estimates import (
    BucketRef,
    DayUsage,
    UsageReadout,
    days_to_estimate,
    estimate_operation,
    estimate_posting_nano,
    price_day,
    reversal_operation,
    window_end_of,
)
from billing.services.ledger import apply_in
from billing.services.ports import Transactions, UnitOfWork

logger = Logger(child=True)

DEFAULT_PERIOD = timedelta(minutes=15)
#: S3 storage metrics arrive 24–48 h late: look at today and the two days before.
DEFAULT_LOOKBACK_DAYS = 3


class UsageEstimatorInput(BaseModel):
    """The schedule's input (``{}``); an operator may widen the lookback after an outage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lookback_days: int = Field(default=DEFAULT_LOOKBACK_DAYS, ge=1, le=14)


class UsageMetrics(Protocol):
    """Reads the buckets' usage per UTC day, from ``first_day`` 00:00 up to ``window_end``."""

    def read_usage(
        self, buckets: Sequence[BucketRef], first_day: date, window_end: datetime
    ) -> UsageReadout: ...


@dataclass
class EstimatorOutcome:
    window_end: datetime
    buckets: int = 0
    buckets_unreadable: int = 0
    keys_charged: int = 0
    charged_nano: int = 0
    keys_already_estimated: int = 0  # this window (or a later one) already looked at them
    keys_billed_by_export: int = 0
    estimates_reversed_nano: int = 0
    purchases_missing: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)

    def add(self, other: EstimatorOutcome) -> None:
        self.keys_charged += other.keys_charged
        self.charged_nano += other.charged_nano
        self.keys_already_estimated += other.keys_already_estimated
        self.keys_billed_by_export += other.keys_billed_by_export
        self.estimates_reversed_nano += other.estimates_reversed_nano
        self.purchases_missing += other.purchases_missing

    def as_metrics(self) -> dict[str, int]:
        return {
            "UsageEstimateBuckets": self.buckets,
            "UsageEstimateBucketsUnreadable": self.buckets_unreadable,
            "UsageEstimateKeysCharged": self.keys_charged,
            "UsageEstimateChargedNano": self.charged_nano,
            "UsageEstimateKeysAlreadyEstimated": self.keys_already_estimated,
            "UsageEstimateKeysBilledByExport": self.keys_billed_by_export,
        }


class UsageEstimator:
    def __init__(
        self,
        transactions: Transactions,
        metrics: UsageMetrics,
        *,
        period: timedelta = DEFAULT_PERIOD,
    ) -> None:
        self._transactions = transactions
        self._metrics = metrics
        self._period = period

    def run(self, now: datetime, *, lookback_days: int = DEFAULT_LOOKBACK_DAYS) -> EstimatorOutcome:
        """Estimate the window ``now`` falls in; safe to run again (and concurrently) for it."""
        window_end = window_end_of(now, self._period)
        days = days_to_estimate(window_end, lookback_days)
        outcome = EstimatorOutcome(window_end)
        deleted_since = datetime.combine(days[0], time(0), tzinfo=UTC)
        buckets = self._transactions.run(lambda unit: unit.usage_estimates.estimated_buckets(deleted_since))
        outcome.buckets = len(buckets)
        if not buckets:
            return outcome
        readout = self._metrics.read_usage(buckets, days[0], window_end)
        outcome.unreadable = dict(readout.failed)
        outcome.buckets_unreadable = len(readout.failed)
        for bucket, reason in sorted(readout.failed.items()):
            logger.warning(
                "usage metrics unreadable; nothing estimated", extra={"bucket": bucket, "reason": reason}
            )
        by_purchase: dict[object, list[BucketRef]] = {}
        for ref in buckets:
            if ref.bucket not in readout.failed:
                by_purchase.setdefault(ref.purchase_id, []).append(ref)
        wanted = set(days)
        for refs in by_purchase.values():
            usage = {
                ref.bucket: {
                    day: value for day, value in readout.usage.get(ref.bucket, {}).items() if day in wanted
                }
                for ref in refs
            }
            if not any(usage.values()):
                continue  # no datapoints (yet): nothing to change
            counts = self._transactions.run(
                partial(self._estimate_purchase, refs=refs, usage=usage, window_end=window_end)
            )
            outcome.add(counts)
        logger.info(
            "usage estimates done", extra={"window_end": window_end.isoformat(), **outcome.as_metrics()}
        )
        return outcome

    def _estimate_purchase(
        self,
        unit: UnitOfWork,
        *,
        refs: list[BucketRef],
        usage: dict[str, dict[date, DayUsage]],
        window_end: datetime,
    ) -> EstimatorOutcome:
        """One purchase's keys; returns what it did (counted by the caller once it committed)."""
        counts = EstimatorOutcome(window_end)
        store = unit.usage_estimates
        if not store.lock_purchase(refs[0].purchase_id):
            counts.purchases_missing += 1
            return counts
        pricing_by_offer: dict[str, S3Pricing | None] = {}
        for ref in refs:
            if ref.offer_id not in pricing_by_offer:
                offer = unit.catalog.offer(ref.offer_id)
                pricing_by_offer[ref.offer_id] = (
                    offer.pricing if offer is not None and isinstance(offer.pricing, S3Pricing) else None
                )
            pricing = pricing_by_offer[ref.offer_id]
            if pricing is None:
                logger.error(
                    "offer has no S3 pricing; bucket not estimated", extra={"offer_id": ref.offer_id}
                )
                continue
            for usage_day, day_usage in sorted(usage[ref.bucket].items()):
                for item in price_day(day_usage, usage_day, pricing):
                    state = store.open_estimate(ref.purchase_id, ref.bucket, usage_day, item.kind)
                    if state.settled:
                        counts.keys_billed_by_export += 1
                        continue
                    if state.covered_by_export:
                        # The export billed this day after the estimate was made but did not see it.
                        counts.keys_billed_by_export += 1
                        settled = store.settle(ref.purchase_id, ref.bucket, usage_day, item.kind, None)
                        if settled is not None and (operation := reversal_operation(settled, 0)) is not None:
                            apply_in(unit, operation)
                            counts.estimates_reversed_nano += settled.estimated_nano
                        continue
                    if state.last_window_end is not None and state.last_window_end >= window_end:
                        counts.keys_already_estimated += 1
                        continue
                    posting_nano = estimate_posting_nano(state.estimated_nano, item.price_nano)
                    if posting_nano > 0:
                        apply_in(
                            unit,
                            estimate_operation(
                                ref,
                                usage_day,
                                item,
                                amount_nano=posting_nano,
                                window_end=window_end,
                                pricing=pricing,
                            ),
                        )
                        counts.keys_charged += 1
                        counts.charged_nano += posting_nano
                    store.record_estimate(
                        ref.purchase_id,
                        ref.bucket,
                        usage_day,
                        item.kind,
                        estimated_nano=state.estimated_nano + posting_nano,
                        quantity=item.quantity,
                        window_end=window_end,
                    )
        return counts
