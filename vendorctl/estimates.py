"""``vendorctl estimates unsettled``: provisional S3 charges no cost export has replaced yet.

    vendorctl estimates unsettled [--older-than-days N] [--limit N]

One line per (purchase, bucket, day, kind) still carrying its estimate (docs/usage-estimates.md).
Days older than the export's usual lag (2–3 days) usually mean the export does not cover the
bucket (not attributed, or the report lacks resource ids): check the delivery's unattributed summary.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import psycopg

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.money import format_usd


def add_estimates_parser(areas: Any) -> None:
    estimates = areas.add_parser("estimates", help="provisional S3 charges (usage estimates)")
    actions = estimates.add_subparsers(dest="action", required=True)
    unsettled = actions.add_parser("unsettled", help="estimates no cost export has replaced yet")
    unsettled.add_argument("--older-than-days", type=int, default=0, help="only days at least this old")
    unsettled.add_argument("--limit", type=int, default=1_000)


def run_estimates(arguments: argparse.Namespace, out: TextIO) -> int:
    with psycopg.connect(arguments.database_url, autocommit=True) as connection:
        report = PostgresTransactions(lambda: connection).run(
            lambda unit: unit.usage_estimates.unsettled(
                min_age_days=arguments.older_than_days, limit=arguments.limit
            )
        )
    if not report:
        print("no unsettled estimates", file=out)
        return 0
    for item in report:
        print(
            f"{item.usage_day}  {item.age_days:>3}d  {item.purchase_id}  {item.bucket:<40} "
            f"{item.kind.value:<13} {format_usd(item.estimated_nano):>18}",
            file=out,
        )
    total = sum(item.estimated_nano for item in report)
    print(f"{len(report)} unsettled estimate(s), {format_usd(total)} USD", file=out)
    return 0
