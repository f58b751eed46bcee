"""Cost-export deliveries, charges, resource attribution and staging in Postgres.

A delivery's costs are COPYed into ``cost_export_staged_costs`` under an attempt id
before the charging transaction starts (constant memory, however many keys). The
charging transaction then attributes them set-based (provisioning table first, the
``officex_purchase_id`` tag second), streams the keys whose cost moved through a
server-side cursor, and deletes the attempt's rows. Deliveries of one report and
billing period are charged one at a time under a transaction-scoped advisory lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from billing.domain.cost_export import BucketDayCost, ChargeKind, Delivery, UnattributedCost
from billing.domain.cost_export_charging import (
    AMBIGUOUS_TAG,
    UNKNOWN_BUCKET,
    ChargeChange,
    ChargeRecord,
    ChargeTotals,
    DeliveryRecord,
    DeliveryStatus,
    RecordedDelivery,
)

#: Charging and staging may touch 100k+ rows in one statement: more than an API request's timeout.
LONG_STATEMENT_TIMEOUT = "300s"
_FETCH_BATCH = 2_000
_UPSERT_BATCH = 1_000
_UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

_INSERT_DELIVERY = """
INSERT INTO cost_export_deliveries (report_name, format, billing_period, delivery_id, delivered_at,
                                    manifest_bucket, manifest_key, data_files)
VALUES (%(report)s, %(format)s, %(period)s, %(delivery_id)s, %(delivered_at)s,
        %(bucket)s, %(key)s, %(data_files)s)
ON CONFLICT ON CONSTRAINT cost_export_deliveries_once DO NOTHING
RETURNING id
"""

# A delivery seen before is taken up again only if it never got through (crashed or failed);
# an applied or superseded one is final. Blocks behind a concurrent charging transaction.
_RESUME_DELIVERY = """
UPDATE cost_export_deliveries
   SET status = 'processing', reason = NULL, attempts = attempts + 1, started_at = now(),
       finished_at = NULL
 WHERE report_name = %(report)s AND billing_period = %(period)s AND delivery_id = %(delivery_id)s
   AND status IN ('processing', 'failed')
RETURNING id
"""

_FIND_DELIVERY = """
SELECT id, status FROM cost_export_deliveries
 WHERE report_name = %(report)s AND billing_period = %(period)s AND delivery_id = %(delivery_id)s
"""

_NEWER_APPLIED = """
SELECT id FROM cost_export_deliveries
 WHERE report_name = %(report)s AND billing_period = %(period)s AND status = 'applied'
   AND (delivered_at, delivery_id) > (%(delivered_at)s, %(delivery_id)s)
 ORDER BY delivered_at DESC, delivery_id DESC
 LIMIT 1
"""

_ATTRIBUTE_BY_RESOURCE = """
UPDATE cost_export_staged_costs s
   SET purchase_id = r.purchase_id
  FROM provisioned_resources r
  JOIN purchases p ON p.id = r.purchase_id
  JOIN offers o ON o.id = p.offer_id AND o.kind = 's3_bucket'
 WHERE s.attempt = %(attempt)s AND r.kind = 's3_bucket' AND r.name = s.bucket
"""

# The tag may carry our purchase id or OfficeX's; it must name exactly one purchase of an S3 offer.
_ATTRIBUTE_BY_TAG = f"""
UPDATE cost_export_staged_costs s
   SET purchase_id = CASE WHEN t.matches = 1 THEN t.purchase_id END,
       unattributed = CASE WHEN t.matches > 1 THEN '{AMBIGUOUS_TAG}' END
  FROM (SELECT tags.purchase_tag, min(p.id::text)::uuid AS purchase_id, count(DISTINCT p.id) AS matches
          FROM (SELECT DISTINCT purchase_tag FROM cost_export_staged_costs
                 WHERE attempt = %(attempt)s AND purchase_id IS NULL AND purchase_tag IS NOT NULL) tags
          JOIN purchases p
            ON p.id = CASE WHEN tags.purchase_tag ~ '{_UUID_PATTERN}' THEN tags.purchase_tag::uuid END
            OR p.officex_purchase_id = tags.purchase_tag
          JOIN offers o ON o.id = p.offer_id AND o.kind = 's3_bucket'
         GROUP BY tags.purchase_tag) t
 WHERE s.attempt = %(attempt)s AND s.purchase_id IS NULL AND s.purchase_tag = t.purchase_tag
"""

_UNATTRIBUTED_REST = f"""
UPDATE cost_export_staged_costs SET unattributed = '{UNKNOWN_BUCKET}'
 WHERE attempt = %(attempt)s AND purchase_id IS NULL AND unattributed IS NULL
"""

_UNATTRIBUTED_SUMMARY = """
SELECT unattributed, sum(cost) AS cost, count(*) AS keys
  FROM cost_export_staged_costs
 WHERE attempt = %(attempt)s AND purchase_id IS NULL
 GROUP BY unattributed ORDER BY unattributed
"""

_UNATTRIBUTED_BUCKETS = """
SELECT bucket, sum(cost) AS cost FROM cost_export_staged_costs
 WHERE attempt = %(attempt)s AND purchase_id IS NULL
 GROUP BY bucket ORDER BY sum(abs(cost)) DESC, bucket LIMIT %(limit)s
"""

# Keys of this delivery whose cost differs from what was billed, and keys billed before for
# this report and period that the delivery no longer has (a complete month-to-date delivery:
# absent means zero now). Ordered by purchase so concurrent deliveries lock purchases alike.
_CHARGE_CHANGES = """
WITH now_costs AS MATERIALIZED (
    SELECT purchase_id, bucket, usage_day, charge_kind, sum(cost) AS cost
      FROM cost_export_staged_costs
     WHERE attempt = %(attempt)s AND purchase_id IS NOT NULL
     GROUP BY purchase_id, bucket, usage_day, charge_kind
), changes AS (
    SELECT n.purchase_id, n.bucket, n.usage_day, n.charge_kind, n.cost,
           c.billed_cost, COALESCE(c.billed_nano, 0) AS billed_nano
      FROM now_costs n
      LEFT JOIN cost_export_charges c
        ON c.purchase_id = n.purchase_id AND c.bucket = n.bucket AND c.usage_day = n.usage_day
       AND c.charge_kind = n.charge_kind
     WHERE c.billed_cost IS DISTINCT FROM n.cost
    UNION ALL
    SELECT c.purchase_id, c.bucket, c.usage_day, c.charge_kind, 0::numeric, c.billed_cost, c.billed_nano
      FROM cost_export_charges c
     WHERE c.report_name = %(report)s AND c.billing_period = %(period)s
       AND (c.billed_cost <> 0 OR c.billed_nano <> 0)
       AND NOT EXISTS (SELECT 1 FROM cost_export_staged_costs s
                        WHERE s.attempt = %(attempt)s AND s.bucket = c.bucket AND s.usage_day = c.usage_day
                          AND s.charge_kind = c.charge_kind AND s.purchase_id = c.purchase_id)
)
SELECT ch.purchase_id, p.offer_id, ch.bucket, ch.usage_day, ch.charge_kind, ch.cost, ch.billed_cost,
       ch.billed_nano
  FROM changes ch JOIN purchases p ON p.id = ch.purchase_id
 ORDER BY ch.purchase_id, ch.usage_day, ch.bucket, ch.charge_kind
"""

_UPSERT_CHARGE = """
INSERT INTO cost_export_charges (purchase_id, bucket, usage_day, charge_kind, billed_cost, billed_nano,
                                 report_name, billing_period, last_delivery_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (purchase_id, bucket, usage_day, charge_kind) DO UPDATE
   SET billed_cost = EXCLUDED.billed_cost, billed_nano = EXCLUDED.billed_nano,
       report_name = EXCLUDED.report_name, billing_period = EXCLUDED.billing_period,
       last_delivery_id = EXCLUDED.last_delivery_id, updated_at = now()
"""

_DELIVERY_COLUMNS = """id, report_name, format, billing_period, delivery_id, delivered_at, manifest_bucket,
    manifest_key, status, reason, attempts, rows_read, s3_rows, charges_changed, charged_nano,
    refunded_nano, unattributed, started_at, finished_at"""


def _delivery_params(delivery: Delivery) -> dict[str, Any]:
    return {
        "report": delivery.report_name,
        "period": delivery.billing_period,
        "delivery_id": delivery.delivery_id,
        "delivered_at": delivery.delivered_at,
        "format": delivery.format.value,
        "bucket": delivery.bucket,
        "key": delivery.manifest_key,
        "data_files": len(delivery.data_keys),
    }


def _delivery_record(row: dict[str, Any]) -> DeliveryRecord:
    return DeliveryRecord(
        record_id=row["id"],
        report_name=row["report_name"],
        format=row["format"],
        billing_period=row["billing_period"],
        delivery_id=row["delivery_id"],
        delivered_at=row["delivered_at"],
        manifest_bucket=row["manifest_bucket"],
        manifest_key=row["manifest_key"],
        status=DeliveryStatus(row["status"]),
        reason=row["reason"],
        attempts=row["attempts"],
        rows_read=row["rows_read"],
        s3_rows=row["s3_rows"],
        charges_changed=row["charges_changed"],
        charged_nano=row["charged_nano"],
        refunded_nano=row["refunded_nano"],
        unattributed=list(row["unattributed"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class PostgresCostExportStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    # ------------------------------------------------------------ deliveries
    def begin_delivery(self, delivery: Delivery) -> RecordedDelivery:
        """Record the delivery, or take up again one that never got through; final ones are left alone."""
        params = _delivery_params(delivery)
        inserted = self._connection.execute(_INSERT_DELIVERY, params).fetchone()
        if inserted is not None:
            return RecordedDelivery(inserted[0], DeliveryStatus.PROCESSING, newly_recorded=True)
        resumed = self._connection.execute(_RESUME_DELIVERY, params).fetchone()
        if resumed is not None:
            return RecordedDelivery(resumed[0], DeliveryStatus.PROCESSING, newly_recorded=False)
        found = self._connection.execute(_FIND_DELIVERY, params).fetchone()
        assert found is not None, "a delivery that conflicts on insert exists"
        return RecordedDelivery(found[0], DeliveryStatus(found[1]), newly_recorded=False)

    def find_delivery(self, delivery: Delivery) -> RecordedDelivery | None:
        found = self._connection.execute(_FIND_DELIVERY, _delivery_params(delivery)).fetchone()
        return RecordedDelivery(found[0], DeliveryStatus(found[1]), False) if found else None

    def newer_applied_delivery(self, delivery: Delivery) -> int | None:
        """The record id of an applied delivery of the same period delivered after this one."""
        row = self._connection.execute(_NEWER_APPLIED, _delivery_params(delivery)).fetchone()
        return int(row[0]) if row else None

    def lock_billing_period(self, report_name: str, billing_period: date) -> None:
        """Until the transaction ends, no other delivery of this report and period is charged."""
        self._connection.execute(f"SET LOCAL statement_timeout = '{LONG_STATEMENT_TIMEOUT}'")
        self._connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('cost_export'), hashtext(%s))",
            (f"{report_name}:{billing_period.isoformat()}",),
        )

    def delivery_status(self, record_id: int) -> DeliveryStatus:
        """The delivery's status, row locked until the transaction ends."""
        row = self._connection.execute(
            "SELECT status FROM cost_export_deliveries WHERE id = %s FOR UPDATE", (record_id,)
        ).fetchone()
        assert row is not None, f"cost export delivery {record_id} vanished"
        return DeliveryStatus(row[0])

    def mark_superseded(self, record_id: int, superseded_by: int) -> None:
        self._connection.execute(
            """UPDATE cost_export_deliveries
                  SET status = 'superseded', superseded_by = %s, reason = 'a newer delivery is applied',
                      finished_at = now()
                WHERE id = %s AND status <> 'applied'""",
            (superseded_by, record_id),
        )

    def mark_failed(
        self, record_id: int, reason: str, *, rows_read: int | None = None, s3_rows: int | None = None
    ) -> None:
        self._connection.execute(
            """UPDATE cost_export_deliveries
                  SET status = 'failed', reason = %s, rows_read = %s, s3_rows = %s, finished_at = now()
                WHERE id = %s AND status = 'processing'""",
            (reason[:2_000], rows_read, s3_rows, record_id),
        )

    def note_interrupted(self, record_id: int, reason: str) -> None:
        """Say why a delivery is still 'processing' (an outage; the event is retried)."""
        self._connection.execute(
            "UPDATE cost_export_deliveries SET reason = %s WHERE id = %s AND status = 'processing'",
            (reason[:2_000], record_id),
        )

    def mark_applied(
        self,
        record_id: int,
        *,
        rows_read: int,
        s3_rows: int,
        staged_keys: int,
        totals: ChargeTotals,
        unattributed: list[dict[str, Any]],
    ) -> None:
        self._connection.execute(
            """UPDATE cost_export_deliveries
                  SET status = 'applied', reason = NULL, rows_read = %s, s3_rows = %s, staged_keys = %s,
                      charges_changed = %s, charged_nano = %s, refunded_nano = %s, unattributed = %s,
                      finished_at = now()
                WHERE id = %s""",
            (
                rows_read,
                s3_rows,
                staged_keys,
                totals.charges_changed,
                totals.charged_nano,
                totals.refunded_nano,
                Jsonb(unattributed),
                record_id,
            ),
        )

    def recent_deliveries(self, limit: int) -> list[DeliveryRecord]:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM cost_export_deliveries ORDER BY started_at DESC, id DESC "
                "LIMIT %s",
                (limit,),
            ).fetchall()
        return [_delivery_record(row) for row in rows]

    # -------------------------------------------------------------- staging
    def stage_costs(
        self, attempt: UUID, costs: Iterable[BucketDayCost], progress: Callable[[int], None] | None = None
    ) -> int:
        """COPY the costs in under ``attempt``; returns how many keys were staged."""
        self._connection.execute(f"SET LOCAL statement_timeout = '{LONG_STATEMENT_TIMEOUT}'")
        staged = 0
        with (
            self._connection.cursor() as cursor,
            cursor.copy(
                "COPY cost_export_staged_costs (attempt, bucket, purchase_tag, usage_day, charge_kind, cost) "
                "FROM STDIN"
            ) as copy,
        ):
            for item in costs:
                key = item.key
                copy.write_row(
                    (attempt, key.bucket, key.purchase_tag, key.usage_day, key.kind.value, item.cost)
                )
                staged += 1
                if progress is not None and staged % 10_000 == 0:
                    progress(10_000)
        if progress is not None and staged % 10_000:
            progress(staged % 10_000)
        # Fresh statistics, so the charging queries are planned for the rows just staged.
        self._connection.execute("ANALYZE cost_export_staged_costs")
        return staged

    def staged_count(self, attempt: UUID) -> int:
        row = self._connection.execute(
            "SELECT count(*) FROM cost_export_staged_costs WHERE attempt = %s", (attempt,)
        ).fetchone()
        return int(row[0]) if row else 0

    def drop_staged(self, attempt: UUID) -> None:
        self._connection.execute("DELETE FROM cost_export_staged_costs WHERE attempt = %s", (attempt,))

    def drop_stale_staged(self, older_than: timedelta) -> int:
        """Rows left by attempts that died between staging and charging."""
        return self._connection.execute(
            "DELETE FROM cost_export_staged_costs WHERE staged_at < now() - %s", (older_than,)
        ).rowcount

    # -------------------------------------------------------------- charging
    def attribute_staged(self, attempt: UUID) -> None:
        """Give each staged cost its purchase (provisioning table, then tag), or the reason it has none."""
        params = {"attempt": attempt}
        self._connection.execute(
            "UPDATE cost_export_staged_costs SET purchase_id = NULL, unattributed = NULL WHERE attempt = %s",
            (attempt,),
        )
        self._connection.execute(_ATTRIBUTE_BY_RESOURCE, params)
        self._connection.execute(_ATTRIBUTE_BY_TAG, params)
        self._connection.execute(_UNATTRIBUTED_REST, params)

    def unattributed_summary(
        self, attempt: UUID, *, top_buckets: int = 20
    ) -> tuple[list[UnattributedCost], list[tuple[str, Decimal]]]:
        """Unattributed S3 cost by reason, and the buckets carrying most of it."""
        params = {"attempt": attempt, "limit": top_buckets}
        summary = [
            UnattributedCost(reason=row[0], product="AmazonS3", cost=row[1], rows=int(row[2]))
            for row in self._connection.execute(_UNATTRIBUTED_SUMMARY, params).fetchall()
        ]
        buckets = [(row[0], row[1]) for row in self._connection.execute(_UNATTRIBUTED_BUCKETS, params)]
        return summary, buckets

    def charge_changes(self, attempt: UUID, report_name: str, billing_period: date) -> Iterator[ChargeChange]:
        """Keys whose billed amount may move, streamed from a server-side cursor (transaction only)."""
        with self._connection.cursor(name=f"cost_export_changes_{uuid4().hex}") as cursor:
            cursor.itersize = _FETCH_BATCH
            cursor.execute(
                _CHARGE_CHANGES, {"attempt": attempt, "report": report_name, "period": billing_period}
            )
            for row in cursor:
                yield ChargeChange(
                    purchase_id=row[0],
                    offer_id=row[1],
                    bucket=row[2],
                    usage_day=row[3],
                    kind=ChargeKind(row[4]),
                    cost=row[5],
                    billed_cost=row[6],
                    billed_nano=int(row[7]),
                )

    def record_charges(
        self, records: Sequence[ChargeRecord], *, report_name: str, billing_period: date, record_id: int
    ) -> None:
        for start in range(0, len(records), _UPSERT_BATCH):
            batch = records[start : start + _UPSERT_BATCH]
            with self._connection.cursor() as cursor:
                cursor.executemany(
                    _UPSERT_CHARGE,
                    [
                        (
                            record.purchase_id,
                            record.bucket,
                            record.usage_day,
                            record.kind.value,
                            record.billed_cost,
                            record.billed_nano,
                            report_name,
                            billing_period,
                            record_id,
                        )
                        for record in batch
                    ],
                )
