"""``vendorctl cost-export``: replay a cost-export delivery, preview it, list deliveries.

    vendorctl cost-export replay --manifest s3://BUCKET/KEY [--data-dir DIR] [--dry-run]
    vendorctl cost-export replay --manifest-file PATH [--key KEY] [--data-dir DIR] [--dry-run]
    vendorctl cost-export deliveries [--limit N]

A replay runs exactly what the Lambda runs: an applied delivery stays applied (nothing
changes), a failed or interrupted one is billed, an older one than the newest applied
is superseded. ``--dry-run`` writes nothing and prints what would be charged per
purchase, with the unattributed cost. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import psycopg

from billing.adapters.aws.s3_reports import (
    LocalReportFiles,
    OpenFile,
    ReportFilesReader,
    ReportsNotConfigured,
    S3ReportObjects,
)
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.cost_export import Delivery, DeliveryRejected
from billing.domain.cost_export_charging import (
    DeliveryOutcome,
    DeliveryRecord,
    ManifestObject,
    OutcomeStatus,
    plain_decimal,
)
from billing.domain.errors import DependencyUnavailable
from billing.domain.money import format_usd
from billing.services.cost_export import CostExportBilling, load_delivery

EXIT_OK, EXIT_DATABASE, EXIT_INVALID = 0, 1, 2


class ProgressBar:
    """A one-line progress bar (no dependency): ``label [#####-----] 45% 12.3/27.0 MiB``."""

    def __init__(
        self,
        label: str,
        stream: TextIO,
        *,
        total: int | None = None,
        unit: str = "B",
        enabled: bool = True,
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._unit = unit
        self._enabled = enabled
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last_drawn = float("-inf")
        self._drawn = False

    def __call__(self, amount: int) -> None:
        self.done += amount
        now = self._clock()
        if now - self._last_drawn >= self._min_interval_s:
            self._last_drawn = now
            self._draw()

    def _quantity(self, value: int) -> str:
        if self._unit != "B":
            return f"{value:,}"
        scaled = float(value)
        for suffix in ("B", "KiB", "MiB", "GiB"):
            if scaled < 1024 or suffix == "GiB":
                return f"{scaled:.1f} {suffix}" if suffix != "B" else f"{value} B"
            scaled /= 1024
        return f"{value} B"  # pragma: no cover - the loop always returns

    def line(self) -> str:
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * 24)
            bar = "#" * filled + "-" * (24 - filled)
            amounts = f"{self._quantity(self.done)}/{self._quantity(self.total)}"
            return f"{self.label} [{bar}] {fraction:4.0%} {amounts}"
        suffix = "" if self._unit == "B" else f" {self._unit}"
        return f"{self.label} {self._quantity(self.done)}{suffix}"

    def _draw(self) -> None:
        if self._enabled:
            self._stream.write(f"\r{self.line()}\x1b[K")
            self._stream.flush()
            self._drawn = True

    def close(self) -> None:
        if self._enabled and (self._drawn or self.done):
            self._draw()
            self._stream.write("\n")
            self._stream.flush()


class _ManifestFile:
    """``ReportObjects`` for one local manifest file."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def manifest(self, bucket: str, key: str) -> ManifestObject:
        return LocalReportFiles(self._path.parent).manifest_file(self._path)


def _split_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise ValueError(f"{url!r} is not an s3://bucket/key URL")
    bucket, _, key = url[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"{url!r} is not an s3://bucket/key URL")
    return bucket, key


def add_cost_export_parser(areas: Any) -> None:
    """Register ``cost-export`` on vendorctl's top-level subparsers."""
    cost_export = areas.add_parser("cost-export", help="cost-export deliveries: replay, preview, list")
    actions = cost_export.add_subparsers(dest="action", required=True)
    replay = actions.add_parser(
        "replay", help="bill a delivery again from its manifest (S3 or a local file); --dry-run to preview"
    )
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", metavar="s3://BUCKET/KEY", help="the manifest in the report bucket")
    source.add_argument("--manifest-file", type=Path, metavar="PATH", help="a manifest saved locally")
    replay.add_argument(
        "--key",
        help="with --manifest-file: the manifest's key in the bucket (default: PATH as given, relative)",
    )
    replay.add_argument(
        "--bucket",
        help="with --manifest-file: the report bucket's name (default: the one the manifest names)",
    )
    replay.add_argument(
        "--data-dir",
        type=Path,
        help="read the data files from this folder (default: S3 for --manifest, the manifest's folder "
        "for --manifest-file); a key resolves to DIR/KEY, else DIR/<file name>",
    )
    replay.add_argument("--dry-run", action="store_true", help="print what would be charged; write nothing")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    deliveries = actions.add_parser("deliveries", help="recent deliveries with their status and reason")
    deliveries.add_argument("--limit", type=int, default=20)


def _print_outcome(outcome: DeliveryOutcome, out: TextIO) -> None:
    delivery = outcome.delivery
    print(
        f"delivery {delivery.report_name} {delivery.billing_period:%Y-%m} {delivery.delivery_id} "
        f"({delivery.format.value}, delivered {delivery.delivered_at.isoformat()}, "
        f"{len(delivery.data_keys)} data files)",
        file=out,
    )
    status = {
        OutcomeStatus.APPLIED: "applied",
        OutcomeStatus.ALREADY_APPLIED: "already applied: nothing changed",
        OutcomeStatus.SUPERSEDED: "superseded: a newer delivery of this period is applied; nothing charged",
        OutcomeStatus.FAILED: "failed: nothing charged",
        OutcomeStatus.DRY_RUN: "dry run: nothing written; this is what would be charged",
    }[outcome.status]
    print(f"status: {status}", file=out)
    if outcome.recorded_status is not None:
        print(f"recorded status: {outcome.recorded_status.value}", file=out)
    if outcome.superseded_by is not None:
        print(f"newer applied delivery: #{outcome.superseded_by}", file=out)
    if outcome.reason:
        print(f"reason: {outcome.reason}", file=out)
    if outcome.rows_read is None:
        return
    print(
        f"rows read: {outcome.rows_read:,}  S3 rows: {outcome.s3_rows or 0:,}  "
        f"keys: {outcome.staged_keys or 0:,}",
        file=out,
    )
    totals = outcome.totals
    for purchase in sorted(totals.by_purchase.values(), key=lambda item: str(item.purchase_id)):
        print(
            f"  purchase {purchase.purchase_id}  charge {format_usd(purchase.charged_nano):>16}  "
            f"refund {format_usd(purchase.refunded_nano):>16}  keys {purchase.keys:,}",
            file=out,
        )
    print(
        f"total: charge {format_usd(totals.charged_nano)}  refund {format_usd(totals.refunded_nano)}  "
        f"({totals.charges_changed:,} keys changed, {len(totals.by_purchase):,} purchases)",
        file=out,
    )
    if outcome.unattributed:
        print("unattributed (AWS cost, not charged to anyone):", file=out)
        for item in outcome.unattributed:
            cost = plain_decimal(item.cost)
            print(f"  {item.reason:<24} {item.product:<28} {cost:>18}  ({item.rows:,} rows)", file=out)
        if outcome.unattributed_buckets:
            top = ", ".join(
                f"{bucket} {plain_decimal(cost)}" for bucket, cost in outcome.unattributed_buckets[:10]
            )
            print(f"  buckets without a purchase: {top}", file=out)


def _replay(
    arguments: argparse.Namespace, connection: psycopg.Connection[Any], out: TextIO, err: TextIO
) -> int:
    enabled = not arguments.no_progress
    download_bar = ProgressBar("reading data files", err, enabled=enabled)
    keys_bar = ProgressBar("staging costs", err, unit="keys", enabled=enabled)
    if arguments.manifest:
        bucket, key = _split_s3_url(arguments.manifest)
        s3 = S3ReportObjects(progress=download_bar)
        delivery = load_delivery(s3, bucket, key)
        open_file_for: Callable[[Delivery], OpenFile] = lambda delivery: s3.opener(delivery.bucket)  # noqa: E731
        if arguments.data_dir:
            local = LocalReportFiles(arguments.data_dir, progress=download_bar)
            open_file_for = lambda delivery: local.opener(delivery.bucket)  # noqa: E731
            download_bar.total = _local_total(local, delivery)
    else:
        path: Path = arguments.manifest_file
        key = arguments.key or PurePosixPath(path.as_posix()).as_posix().lstrip("/")
        manifest = _ManifestFile(path)
        bucket = arguments.bucket or _bucket_named_in(manifest.manifest("", key).body)
        delivery = load_delivery(manifest, bucket, key)
        local = LocalReportFiles(arguments.data_dir or path.parent, progress=download_bar)
        open_file_for = lambda delivery: local.opener(delivery.bucket)  # noqa: E731
        download_bar.total = _local_total(local, delivery)
    billing = CostExportBilling(PostgresTransactions(lambda: connection), ReportFilesReader(open_file_for))
    try:
        if arguments.dry_run:
            outcome = billing.preview(delivery, progress=keys_bar)
        else:
            outcome = billing.process(delivery, progress=keys_bar)
    finally:
        download_bar.close()
        keys_bar.close()
    _print_outcome(outcome, out)
    return EXIT_INVALID if outcome.status is OutcomeStatus.FAILED else EXIT_OK


def _bucket_named_in(body: bytes) -> str:
    """The report bucket a manifest names (legacy ``bucket``, or its first ``s3://`` data file)."""
    try:
        document = json.loads(body)
    except ValueError:
        return "local"  # the parser will say what is wrong with it
    if not isinstance(document, dict):
        return "local"
    if isinstance(document.get("bucket"), str) and document["bucket"]:
        return str(document["bucket"])
    for field_name in ("dataFiles", "reportKeys"):
        files = document.get(field_name)
        if isinstance(files, list) and files and isinstance(files[0], str) and files[0].startswith("s3://"):
            return files[0][5:].partition("/")[0]
    return "local"


def _local_total(files: LocalReportFiles, delivery: Delivery) -> int | None:
    try:
        return sum(files.resolve(key).stat().st_size for key in delivery.data_keys)
    except (DeliveryRejected, OSError):
        return None  # the reader will say which file is missing


def _print_deliveries(records: list[DeliveryRecord], out: TextIO) -> None:
    if not records:
        print("no cost-export deliveries yet", file=out)
        return
    for record in records:
        print(
            f"#{record.record_id:<6} {record.started_at:%Y-%m-%d %H:%M} {record.report_name} "
            f"{record.billing_period:%Y-%m} {record.delivery_id}  {record.status.value:<10} "
            f"charged {format_usd(record.charged_nano)} refunded {format_usd(record.refunded_nano)}"
            f"{f'  reason: {record.reason}' if record.reason else ''}",
            file=out,
        )


def _run(arguments: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with psycopg.connect(arguments.database_url, autocommit=True) as connection:
        if arguments.action == "deliveries":
            transactions = PostgresTransactions(lambda: connection)
            billing = CostExportBilling(transactions, ReportFilesReader(_no_files))
            _print_deliveries(billing.recent_deliveries(arguments.limit), out)
            return EXIT_OK
        return _replay(arguments, connection, out, err)


def run_cost_export(arguments: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Exit codes as vendorctl's: 0 done, 1 the database (or S3) is unavailable, 2 wrong input/failed."""
    if not arguments.database_url:
        print("vendorctl: set DATABASE_URL or give --database-url", file=err)
        return EXIT_INVALID
    try:
        return _run(arguments, out, err)
    except DependencyUnavailable as exc:
        print(f"vendorctl: {exc.detail}", file=err)
        return EXIT_DATABASE
    except (ValueError, ReportsNotConfigured) as exc:
        print(f"vendorctl: {exc}", file=err)
    except DeliveryRejected as exc:  # not a usable manifest
        print(f"vendorctl: the manifest cannot be used: {exc.reason}", file=err)
    return EXIT_INVALID


def _no_files(delivery: Delivery) -> OpenFile:
    raise AssertionError("listing deliveries reads no files")
