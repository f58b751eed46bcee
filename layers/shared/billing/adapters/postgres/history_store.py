"""Historical billing from the ledger: one statement per report, so every figure is from one snapshot.

Buckets are computed in UTC wall-clock time (``at AT TIME ZONE 'UTC'``), so the
session's ``TimeZone`` never moves an edge: ``date_bin`` on the fixed grid for
hours, days and weeks (origin Monday 2000-01-03 00:00), ``date_trunc('month')``
for months, and ``generate_series`` for the buckets without entries. Both are
core Postgres (14+); TimescaleDB is neither needed nor in the way.

Only entries that change the balance (``amount_nano <> 0``) are read; holds and
releases move held funds, not the balance. That predicate is also what lets the
partial index ``ledger_entries_history`` (migration 0008) serve the range scan.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg

from billing.domain.billing_history import (
    BillingInterval,
    BillingPeriod,
    BucketActivity,
    LedgerHistory,
    MeterUsage,
)

#: Grid bucket of a UTC ``timestamp`` expression ``{t}``, and the step between buckets. Constant fragments.
_BUCKET_OF = {
    BillingInterval.HOUR: "date_bin('1 hour', {t}, TIMESTAMP '2000-01-03 00:00:00')",
    BillingInterval.DAY: "date_bin('1 day', {t}, TIMESTAMP '2000-01-03 00:00:00')",
    BillingInterval.WEEK: "date_bin('7 days', {t}, TIMESTAMP '2000-01-03 00:00:00')",
    BillingInterval.MONTH: "date_trunc('month', {t})",
}
_STEP = {
    BillingInterval.HOUR: "INTERVAL '1 hour'",
    BillingInterval.DAY: "INTERVAL '1 day'",
    BillingInterval.WEEK: "INTERVAL '7 days'",
    BillingInterval.MONTH: "INTERVAL '1 month'",
}

_REPORT = """
WITH grid AS (
    SELECT bucket, bucket + {step} AS bucket_end
      FROM generate_series({first_bucket}, {last_bucket}, {step}) AS bucket
), entries AS (
    SELECT {entry_bucket} AS bucket, id, at, kind, amount_nano, balance_after_nano, meter, unit, quantity
      FROM ledger_entries
     WHERE purchase_id = %(purchase_id)s
       AND amount_nano <> 0
       AND at >= %(start)s AND at < %(end)s
), per_bucket AS (
    SELECT bucket,
           count(*) AS entries,
           COALESCE(sum(-amount_nano) FILTER (WHERE kind IN ('usage', 'estimate')), 0)::bigint
               AS usage_cost_nano,
           COALESCE(sum(amount_nano) FILTER (WHERE kind = 'deposit'), 0)::bigint AS deposits_nano,
           COALESCE(sum(amount_nano) FILTER (WHERE kind NOT IN ('usage', 'estimate', 'deposit')), 0)::bigint
               AS adjustments_nano,
           (array_agg(balance_after_nano ORDER BY at DESC, id DESC))[1] AS last_balance_nano
      FROM entries
     GROUP BY bucket
), per_meter AS (
    SELECT bucket,
           jsonb_agg(jsonb_build_object('meter', meter, 'unit', unit, 'quantity', quantity::text,
                                        'cost_nano', cost_nano)) AS usage
      FROM (SELECT bucket, meter, unit, sum(quantity) AS quantity, sum(-amount_nano)::bigint AS cost_nano
              FROM entries
             WHERE kind IN ('usage', 'estimate') AND %(by_meter)s
             GROUP BY bucket, meter, unit) AS meters
     GROUP BY bucket
)
SELECT grid.bucket AT TIME ZONE 'UTC', grid.bucket_end AT TIME ZONE 'UTC',
       COALESCE(per_bucket.entries, 0), COALESCE(per_bucket.usage_cost_nano, 0),
       COALESCE(per_bucket.deposits_nano, 0), COALESCE(per_bucket.adjustments_nano, 0),
       per_bucket.last_balance_nano, per_meter.usage,
       (SELECT balance_after_nano FROM ledger_entries
         WHERE purchase_id = %(purchase_id)s AND amount_nano <> 0 AND at < %(start)s
         ORDER BY at DESC, id DESC LIMIT 1) AS opening_balance_nano
  FROM grid
  LEFT JOIN per_bucket USING (bucket)
  LEFT JOIN per_meter USING (bucket)
 ORDER BY grid.bucket
"""


def report_statement(interval: BillingInterval) -> str:
    """The report statement for ``interval``, built from the constant fragments above only."""
    bucket_of = _BUCKET_OF[interval]
    return _REPORT.format(
        step=_STEP[interval],
        first_bucket=bucket_of.format(t="(%(start)s::timestamptz AT TIME ZONE 'UTC')"),
        last_bucket=bucket_of.format(
            t="((%(end)s::timestamptz - INTERVAL '1 microsecond') AT TIME ZONE 'UTC')"
        ),
        entry_bucket=bucket_of.format(t="(at AT TIME ZONE 'UTC')"),
    )


def _meter_usage(item: dict[str, Any]) -> MeterUsage:
    quantity = item.get("quantity")
    return MeterUsage(
        meter=item.get("meter"),
        unit=item.get("unit"),
        quantity=Decimal(quantity) if quantity is not None else None,
        cost_nano=int(item["cost_nano"]),
    )


def _usage_items(value: Any) -> list[dict[str, Any]]:
    """psycopg loads the ``jsonb_agg`` column as Python lists (NULL when a bucket has no usage)."""
    items = value or []
    assert isinstance(items, list)
    return items


class PostgresHistoryStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def ledger_history(self, purchase_id: UUID, period: BillingPeriod, *, by_meter: bool) -> LedgerHistory:
        rows = self._connection.execute(
            report_statement(period.interval),
            {"purchase_id": purchase_id, "start": period.start, "end": period.end, "by_meter": by_meter},
        ).fetchall()
        opening_nano = rows[0][8] if rows else None
        buckets = [
            BucketActivity(
                start=_utc(row[0]),
                end=_utc(row[1]),
                entries=int(row[2]),
                usage_cost_nano=int(row[3]),
                deposits_nano=int(row[4]),
                adjustments_nano=int(row[5]),
                last_balance_nano=int(row[6]) if row[6] is not None else None,
                usage=tuple(_meter_usage(item) for item in _usage_items(row[7])),
            )
            for row in rows
        ]
        return LedgerHistory(opening_balance_nano=int(opening_nano or 0), buckets=buckets)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)
