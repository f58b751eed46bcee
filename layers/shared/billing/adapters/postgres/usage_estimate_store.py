"""Usage estimates in Postgres: per (purchase, bucket, usage day, charge kind), like cost_export_charges.

The estimator locks the purchase row first, then each estimate row (``FOR UPDATE``), the same
order the cost export's charging transaction takes them (ledger postings, then settling), so
the two never deadlock on the usual path and never both act on one key: whoever comes second
sees what the first committed.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg

from billing.domain.cost_export import ChargeKind
from billing.domain.usage_estimates import BucketRef, EstimateState, SettledEstimate, UnsettledEstimate

# Buckets with metrics worth reading: every S3 bucket provisioning created (not failed half-way),
# deleted ones only while their last days can still show up in the lookback.
_ESTIMATED_BUCKETS = """
SELECT r.purchase_id, p.offer_id, r.name, COALESCE(r.region, 'us-east-1')
  FROM provisioned_resources r
  JOIN purchases p ON p.id = r.purchase_id
  JOIN offers o ON o.id = p.offer_id AND o.kind = 's3_bucket'
 WHERE r.kind = 's3_bucket'
   AND r.status IN ('active', 'suspended', 'deleted')
   AND (r.deleted_at IS NULL OR r.deleted_at >= %(deleted_since)s)
 ORDER BY r.purchase_id, r.name
"""

_OPEN_ESTIMATE = """
INSERT INTO usage_estimates (purchase_id, bucket, usage_day, charge_kind)
VALUES (%(purchase_id)s, %(bucket)s, %(day)s, %(kind)s)
ON CONFLICT DO NOTHING
"""

_LOCK_ESTIMATE = """
SELECT e.estimated_nano, e.last_window_end, e.settled_at IS NOT NULL,
       EXISTS (SELECT 1 FROM cost_export_charges c
                WHERE c.purchase_id = e.purchase_id AND c.bucket = e.bucket AND c.usage_day = e.usage_day)
  FROM usage_estimates e
 WHERE e.purchase_id = %(purchase_id)s AND e.bucket = %(bucket)s AND e.usage_day = %(day)s
   AND e.charge_kind = %(kind)s
   FOR UPDATE OF e
"""

_RECORD_ESTIMATE = """
UPDATE usage_estimates
   SET estimated_nano = %(estimated)s, quantity = %(quantity)s, last_window_end = %(window_end)s,
       updated_at = now()
 WHERE purchase_id = %(purchase_id)s AND bucket = %(bucket)s AND usage_day = %(day)s
   AND charge_kind = %(kind)s AND settled_at IS NULL
"""

_SETTLE_ONE = """
UPDATE usage_estimates
   SET settled_at = now(), settled_by_delivery = %(delivery)s, reversed_nano = estimated_nano,
       updated_at = now()
 WHERE purchase_id = %(purchase_id)s AND bucket = %(bucket)s AND usage_day = %(day)s
   AND charge_kind = %(kind)s AND settled_at IS NULL
RETURNING estimated_nano
"""

# Every open estimate of a (purchase, bucket, day) the delivery bills, whatever the charge kind:
# the export is the whole truth for a day it covers (a kind it does not list cost nothing).
_SETTLE_COVERED = """
UPDATE usage_estimates e
   SET settled_at = now(), settled_by_delivery = %(delivery)s, reversed_nano = e.estimated_nano,
       updated_at = now()
  FROM (SELECT DISTINCT purchase_id, bucket, usage_day FROM cost_export_staged_costs
         WHERE attempt = %(attempt)s AND purchase_id IS NOT NULL) s
 WHERE e.purchase_id = s.purchase_id AND e.bucket = s.bucket AND e.usage_day = s.usage_day
   AND e.settled_at IS NULL
RETURNING e.purchase_id, e.bucket, e.usage_day, e.charge_kind, e.reversed_nano
"""

_UNSETTLED = """
SELECT purchase_id, bucket, usage_day, charge_kind, estimated_nano, quantity, last_window_end, age_days
  FROM usage_estimates_unsettled
 WHERE age_days >= %(min_age)s
 ORDER BY usage_day, purchase_id, bucket, charge_kind
 LIMIT %(limit)s
"""


def _key(purchase_id: UUID, bucket: str, usage_day: date, kind: ChargeKind) -> dict[str, Any]:
    return {"purchase_id": purchase_id, "bucket": bucket, "day": usage_day, "kind": kind.value}


class PostgresUsageEstimateStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def estimated_buckets(self, deleted_since: datetime) -> list[BucketRef]:
        rows = self._connection.execute(_ESTIMATED_BUCKETS, {"deleted_since": deleted_since}).fetchall()
        return [BucketRef(row[0], row[1], row[2], row[3]) for row in rows]

    def lock_purchase(self, purchase_id: UUID) -> bool:
        """Take the purchase row's lock (the one every ledger posting takes) first; ``False`` if gone."""
        row = self._connection.execute(
            "SELECT 1 FROM purchases WHERE id = %s FOR NO KEY UPDATE", (purchase_id,)
        ).fetchone()
        return row is not None

    def open_estimate(
        self, purchase_id: UUID, bucket: str, usage_day: date, kind: ChargeKind
    ) -> EstimateState:
        """The key's row, created if new, locked until the transaction ends."""
        params = _key(purchase_id, bucket, usage_day, kind)
        self._connection.execute(_OPEN_ESTIMATE, params)
        row = self._connection.execute(_LOCK_ESTIMATE, params).fetchone()
        assert row is not None, "an estimate row that was just inserted exists"
        return EstimateState(int(row[0]), row[1], bool(row[2]), bool(row[3]))

    def record_estimate(
        self,
        purchase_id: UUID,
        bucket: str,
        usage_day: date,
        kind: ChargeKind,
        *,
        estimated_nano: int,
        quantity: Decimal,
        window_end: datetime,
    ) -> None:
        self._connection.execute(
            _RECORD_ESTIMATE,
            {
                **_key(purchase_id, bucket, usage_day, kind),
                "estimated": estimated_nano,
                "quantity": quantity,
                "window_end": window_end,
            },
        )

    def settle(
        self,
        purchase_id: UUID,
        bucket: str,
        usage_day: date,
        kind: ChargeKind,
        delivery_record_id: int | None,
    ) -> SettledEstimate | None:
        """Mark one open estimate settled; returns what must be reversed (``None`` if already settled)."""
        row = self._connection.execute(
            _SETTLE_ONE, {**_key(purchase_id, bucket, usage_day, kind), "delivery": delivery_record_id}
        ).fetchone()
        return SettledEstimate(purchase_id, bucket, usage_day, kind, int(row[0])) if row else None

    def settle_covered_by_delivery(self, attempt: UUID, delivery_record_id: int) -> list[SettledEstimate]:
        """Settle every open estimate of a bucket and day the delivery's attributed costs cover."""
        rows = self._connection.execute(
            _SETTLE_COVERED, {"attempt": attempt, "delivery": delivery_record_id}
        ).fetchall()
        settled = [SettledEstimate(row[0], row[1], row[2], ChargeKind(row[3]), int(row[4])) for row in rows]
        return sorted(
            settled, key=lambda item: (str(item.purchase_id), item.usage_day, item.bucket, item.kind)
        )

    def unsettled(self, *, min_age_days: int = 0, limit: int = 1_000) -> list[UnsettledEstimate]:
        rows = self._connection.execute(_UNSETTLED, {"min_age": min_age_days, "limit": limit}).fetchall()
        return [
            UnsettledEstimate(
                row[0], row[1], row[2], ChargeKind(row[3]), int(row[4]), row[5], row[6], int(row[7])
            )
            for row in rows
        ]
