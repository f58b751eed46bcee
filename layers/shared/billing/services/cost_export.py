"""Charging S3 usage from the AWS cost export, restatement-safe (DESIGN §6, docs/cost-export.md).

One delivery is processed in three steps:

1. **Record** it (idempotent on report, billing period and delivery id). An applied or
   superseded delivery is final: a duplicate S3 event or a replay changes nothing.
2. **Read and stage** it, outside any charging transaction: the reader parses the files
   the manifest lists; the costs are COPYed into a staging table (constant memory). A
   delivery that cannot be read (``DeliveryRejected``) is marked ``failed`` with the
   reason, charges nothing, and is not retried (the reason will not change by itself).
3. **Charge** it in one transaction, under an advisory lock per report and period:
   unless a newer delivery of the period is already applied (then it is ``superseded``),
   every key whose cost moved, and every key billed before but absent now, is brought
   to ``round_half_even(cost × markup)`` by posting the difference through the ledger
   (idempotency key per delivery and key), and the delivery is marked ``applied``.

Database or AWS outages raise (the Lambda event is retried); nothing is half-applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Protocol
from uuid import UUID, uuid4

from aws_lambda_powertools import Logger

from billing.domain.catalog import S3Pricing
from billing.domain.cost_export import (
    BucketDayCost,
    Delivery,
    DeliveryRejected,
    DeliveryStats,
    ParsedDelivery,
)
from billing.domain.cost_export_charging import (
    ChargeRecord,
    ChargeTotals,
    DeliveryOutcome,
    DeliveryRecord,
    DeliveryStatus,
    ManifestObject,
    OutcomeStatus,
    merge_unattributed,
    settle_change,
    unattributed_document,
)
from billing.domain.cost_export_manifests import parse_manifest
from billing.domain.errors import DependencyUnavailable
from billing.domain.usage_estimates import reversal_operation
from billing.services.ledger import apply_in
from billing.services.ports import Transactions, UnitOfWork

logger = Logger(child=True)

#: Staged rows older than this belong to an attempt that died; they are cleaned up.
STALE_STAGING = timedelta(hours=6)
_RECORD_BATCH = 1_000


class OfferWithoutS3Pricing(Exception):
    """A purchase billed from the cost export has an offer without S3 pricing (a broken catalog row)."""


class DeliveryReader(Protocol):
    """Reads a delivery's data files to the end; raises ``DeliveryRejected`` when they cannot be billed."""

    def read(self, delivery: Delivery) -> ParsedDelivery: ...


class ReportObjects(Protocol):
    """Where manifests are read from (the report bucket, or a local folder)."""

    def manifest(self, bucket: str, key: str) -> ManifestObject: ...


def load_delivery(objects: ReportObjects, bucket: str, key: str) -> Delivery:
    """The delivery a manifest describes; ``DeliveryRejected`` if it is not a usable manifest."""
    manifest = objects.manifest(bucket, key)
    return parse_manifest(bucket, key, manifest.body, manifest.last_modified)


@dataclass(frozen=True)
class _Staged:
    parsed: ParsedDelivery
    attempt: UUID
    keys: int


def _finite(costs: Iterator[BucketDayCost]) -> Iterator[BucketDayCost]:
    for item in costs:
        if not item.cost.is_finite():
            raise DeliveryRejected(f"cost of {item.key.bucket} on {item.key.usage_day} is not a number")
        yield item


class CostExportBilling:
    def __init__(self, transactions: Transactions, reader: DeliveryReader) -> None:
        self._transactions = transactions
        self._reader = reader

    # ---------------------------------------------------------------- entry points
    def process(
        self, delivery: Delivery, *, progress: Callable[[int], None] | None = None
    ) -> DeliveryOutcome:
        """Charge ``delivery`` (see the module docstring); safe to call again for the same delivery."""
        recorded = self._transactions.run(lambda unit: unit.cost_export.begin_delivery(delivery))
        record_id = recorded.record_id
        log = {
            "report": delivery.report_name,
            "billing_period": delivery.billing_period.isoformat(),
            "delivery_id": delivery.delivery_id,
            "record_id": record_id,
        }
        if recorded.status is DeliveryStatus.APPLIED:
            logger.info("cost export delivery already applied; nothing to do", extra=log)
            return DeliveryOutcome(OutcomeStatus.ALREADY_APPLIED, delivery, record_id)
        if recorded.status is DeliveryStatus.SUPERSEDED:
            logger.info("cost export delivery was superseded before; nothing to do", extra=log)
            return DeliveryOutcome(OutcomeStatus.SUPERSEDED, delivery, record_id)
        newer = self._transactions.run(
            lambda unit: self._supersede_if_newer_applied(unit, delivery, record_id)
        )
        if newer is not None:
            logger.info("cost export delivery superseded by a newer one", extra={**log, "newer": newer})
            return DeliveryOutcome(OutcomeStatus.SUPERSEDED, delivery, record_id, superseded_by=newer)
        attempt = uuid4()
        try:
            staged = self._read_and_stage(delivery, attempt, progress)
        except DeliveryRejected as rejected:
            reason, stats = rejected.reason, rejected.stats
            self._transactions.run(lambda unit: self._fail(unit, record_id, attempt, reason, stats))
            logger.error("cost export delivery rejected", extra={**log, "reason": reason})
            return DeliveryOutcome(OutcomeStatus.FAILED, delivery, record_id, reason=reason)
        except Exception as error:
            self._note_interrupted(record_id, attempt, error)
            raise
        try:
            outcome = self._transactions.run(
                lambda unit: self._charge(unit, delivery, record_id, staged, dry_run=False)
            )
        except Exception as error:
            self._note_interrupted(record_id, attempt, error)
            raise
        logger.info(
            "cost export delivery processed",
            extra={
                **log,
                "status": outcome.status.value,
                "rows_read": outcome.rows_read,
                "staged_keys": outcome.staged_keys,
                "charges_changed": outcome.totals.charges_changed,
                "charged_nano": outcome.totals.charged_nano,
                "refunded_nano": outcome.totals.refunded_nano,
                "estimates_reversed_nano": outcome.estimates_reversed_nano,
                "unattributed_cost": str(sum((item.cost for item in outcome.unattributed), Decimal(0))),
            },
        )
        return outcome

    def preview(
        self, delivery: Delivery, *, progress: Callable[[int], None] | None = None
    ) -> DeliveryOutcome:
        """A dry run: what ``process`` would charge now, per purchase. No delivery or charge is written."""
        recorded = self._transactions.run(lambda unit: unit.cost_export.find_delivery(delivery))
        recorded_status = recorded.status if recorded else None
        attempt = uuid4()
        try:
            staged = self._read_and_stage(delivery, attempt, progress)
        except DeliveryRejected as rejected:
            self._transactions.run(lambda unit: unit.cost_export.drop_staged(attempt))
            return DeliveryOutcome(
                OutcomeStatus.FAILED, delivery, reason=rejected.reason, recorded_status=recorded_status
            )
        try:
            outcome = self._transactions.run(
                lambda unit: self._charge(unit, delivery, None, staged, dry_run=True)
            )
        finally:
            self._transactions.run(lambda unit: unit.cost_export.drop_staged(attempt))
        return DeliveryOutcome(
            outcome.status,
            delivery,
            recorded.record_id if recorded else None,
            rows_read=outcome.rows_read,
            s3_rows=outcome.s3_rows,
            staged_keys=outcome.staged_keys,
            totals=outcome.totals,
            unattributed=outcome.unattributed,
            unattributed_buckets=outcome.unattributed_buckets,
            recorded_status=recorded_status,
            superseded_by=outcome.superseded_by,
        )

    def recent_deliveries(self, limit: int = 20) -> list[DeliveryRecord]:
        return self._transactions.run(lambda unit: unit.cost_export.recent_deliveries(limit))

    # ---------------------------------------------------------------- steps
    @staticmethod
    def _supersede_if_newer_applied(unit: UnitOfWork, delivery: Delivery, record_id: int) -> int | None:
        newer = unit.cost_export.newer_applied_delivery(delivery)
        if newer is not None:
            unit.cost_export.mark_superseded(record_id, newer)
        return newer

    def _read_and_stage(
        self, delivery: Delivery, attempt: UUID, progress: Callable[[int], None] | None
    ) -> _Staged:
        parsed = self._reader.read(delivery)
        consumed = False

        def stage(unit: UnitOfWork) -> int:
            nonlocal consumed
            unit.cost_export.drop_stale_staged(STALE_STAGING)
            if consumed:  # the costs iterator is single-use: a retried transaction cannot stage again
                raise DependencyUnavailable("staging the delivery was interrupted; retry the delivery")
            consumed = True
            return unit.cost_export.stage_costs(attempt, _finite(parsed.costs), progress)

        keys = self._transactions.run(stage)
        return _Staged(parsed, attempt, keys)

    @staticmethod
    def _fail(
        unit: UnitOfWork, record_id: int, attempt: UUID, reason: str, stats: DeliveryStats | None
    ) -> None:
        unit.cost_export.drop_staged(attempt)
        unit.cost_export.mark_failed(
            record_id,
            reason,
            rows_read=stats.rows_read if stats else None,
            s3_rows=stats.s3_rows if stats else None,
        )

    def _note_interrupted(self, record_id: int, attempt: UUID, error: Exception) -> None:
        """Best effort: say why the delivery is still 'processing'; the retried event takes it up again."""
        reason = f"interrupted ({type(error).__name__}); will be retried"

        def note(unit: UnitOfWork) -> None:
            unit.cost_export.drop_staged(attempt)
            unit.cost_export.note_interrupted(record_id, reason)

        try:
            self._transactions.run(note)
        except Exception:  # the database may be what failed; the original error is what matters
            logger.warning(
                "could not note the interrupted cost export delivery", extra={"record_id": record_id}
            )

    def _charge(
        self,
        unit: UnitOfWork,
        delivery: Delivery,
        record_id: int | None,
        staged: _Staged,
        *,
        dry_run: bool,
    ) -> DeliveryOutcome:
        store = unit.cost_export
        store.lock_billing_period(delivery.report_name, delivery.billing_period)
        if record_id is not None:
            status = store.delivery_status(record_id)
            if status in (DeliveryStatus.APPLIED, DeliveryStatus.SUPERSEDED):
                # A concurrent process of the same delivery got there first.
                store.drop_staged(staged.attempt)
                final = (
                    OutcomeStatus.ALREADY_APPLIED
                    if status is DeliveryStatus.APPLIED
                    else OutcomeStatus.SUPERSEDED
                )
                return DeliveryOutcome(final, delivery, record_id)
        newer = store.newer_applied_delivery(delivery)
        if newer is not None:
            if record_id is not None:
                store.mark_superseded(record_id, newer)
                store.drop_staged(staged.attempt)
            return DeliveryOutcome(OutcomeStatus.SUPERSEDED, delivery, record_id, superseded_by=newer)
        if store.staged_count(staged.attempt) != staged.keys:
            raise DependencyUnavailable("the staged costs of the delivery are incomplete; retry the delivery")

        store.attribute_staged(staged.attempt)
        summary, unknown_buckets = store.unattributed_summary(staged.attempt)
        unattributed = merge_unattributed(staged.parsed.unattributed, summary)
        totals = ChargeTotals()
        markups: dict[str, Decimal] = {}
        pending: list[ChargeRecord] = []

        def flush() -> None:
            if record_id is not None and pending:
                store.record_charges(
                    pending,
                    report_name=delivery.report_name,
                    billing_period=delivery.billing_period,
                    record_id=record_id,
                )
            pending.clear()

        for change in store.charge_changes(staged.attempt, delivery.report_name, delivery.billing_period):
            if change.offer_id not in markups:
                markups[change.offer_id] = self._markup(unit, change.offer_id)
            operation, record, diff_nano = settle_change(change, markups[change.offer_id], delivery)
            if diff_nano:
                totals.add(change.purchase_id, diff_nano)
            if dry_run:
                continue
            if operation is not None:
                apply_in(unit, operation)
            pending.append(record)
            if len(pending) >= _RECORD_BATCH:
                flush()
        flush()
        estimates_reversed_nano = 0
        if record_id is not None and not dry_run:
            estimates_reversed_nano = self._reverse_covered_estimates(unit, staged.attempt, record_id)
            store.mark_applied(
                record_id,
                rows_read=staged.parsed.rows_read,
                s3_rows=staged.parsed.s3_rows,
                staged_keys=staged.keys,
                totals=totals,
                unattributed=unattributed_document(unattributed, unknown_buckets),
            )
            store.drop_staged(staged.attempt)
        return DeliveryOutcome(
            OutcomeStatus.DRY_RUN if dry_run else OutcomeStatus.APPLIED,
            delivery,
            record_id,
            rows_read=staged.parsed.rows_read,
            s3_rows=staged.parsed.s3_rows,
            staged_keys=staged.keys,
            totals=totals,
            unattributed=unattributed,
            unattributed_buckets=unknown_buckets,
            estimates_reversed_nano=estimates_reversed_nano,
        )

    @staticmethod
    def _reverse_covered_estimates(unit: UnitOfWork, attempt: UUID, record_id: int) -> int:
        """Replace the provisional estimates of every bucket and day this delivery bills (same transaction).

        Each open estimate of a covered (purchase, bucket, day) is marked settled and its whole
        amount credited back (kind ``reversal``, idempotent per delivery and key), so the key's
        final total is the export's price alone (docs/usage-estimates.md).
        """
        reversed_nano = 0
        for settled in unit.usage_estimates.settle_covered_by_delivery(attempt, record_id):
            operation = reversal_operation(settled, record_id)
            if operation is not None:
                apply_in(unit, operation)
                reversed_nano += settled.estimated_nano
        return reversed_nano

    @staticmethod
    def _markup(unit: UnitOfWork, offer_id: str) -> Decimal:
        offer = unit.catalog.offer(offer_id)
        if offer is None or not isinstance(offer.pricing, S3Pricing):
            # Attribution only picks purchases of S3 offers, so this is a broken catalog row.
            raise OfferWithoutS3Pricing(f"offer {offer_id!r} has no S3 pricing; fix the catalog and replay")
        return offer.pricing.markup
