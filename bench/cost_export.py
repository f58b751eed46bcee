"""Cost-export ingest (issue #6): rows/s and peak RSS of our reader beside plain DuckDB on one file.

1. **Generate** (once; cached under ``--cache-dir``, reused while the parameters match) a
   legacy-CUR gzip CSV of ``--rows`` rows (default 5,000,000, about 2 GB uncompressed) over
   ``--buckets`` buckets (10,000): 43 real CUR columns including ``lineItem/ResourceId`` and the
   ``resourceTags/user:officex_purchase_id`` tag, quoted fields with commas, amounts of which
   15 % are in scientific notation (``1.81E-8``), timestamps with milliseconds at any hour of
   the day, credits, S3 rows without a resource id, other services and Tax rows. Amounts are
   drawn in units of 1e-10 USD, so the exact total the reader must find is known.
2. **Measure**, each engine in its own subprocess (so peak RSS, ``ru_maxrss``, is that engine's),
   the file in the page cache first, rounds alternating the order:

   * ``ours``: ``billing.adapters.cost_export_reader.read_delivery`` over the file, every
     ``BucketDayCost`` consumed; the S3 total must equal the generator's to the last digit
     (exit 1 otherwise);
   * ``duckdb``: plain DuckDB with default settings, ``read_csv(file)`` (type sniffing) +
     ``GROUP BY bucket, day`` of the S3 rows, fetched whole: the reference, not a target;
   * ``python-csv`` (``--engines``; not run by default): ``csv.reader`` over ``gzip.open`` with
     ``Decimal`` sums per (bucket, tag, day, kind), on the first ``--python-rows`` rows (rows/s
     extrapolates linearly: the work per row is constant).

Targets (issue #6): peak RSS of ``ours`` ≤ 300 MB; throughput ≥ 0.5 × DuckDB's.

Run from the repository root::

    .venv/bin/python bench/cost_export.py                      # 5 M rows (first run generates ~2 GB)
    .venv/bin/python bench/cost_export.py --quick              # 20,000 rows, a few seconds
    .venv/bin/python bench/cost_export.py --engines ours,duckdb,python-csv --json

Exit status: 0 done, 1 a check failed (wrong total, an engine crashed), 2 with ``--enforce``
when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "layers" / "shared"), str(REPO_ROOT)]

FORMAT_VERSION = 2
PERIOD = date(2023, 11, 1)
RSS_TARGET_MB = 300.0
RATIO_TARGET = 0.5
UNIT = Decimal("1E-10")

# A subset of the real legacy CUR header (tests/fixtures/billing-exports), plus the resource id and tags.
COLUMNS = [
    "identity/LineItemId",
    "bill/InvoiceId",
    "bill/InvoicingEntity",
    "bill/BillingEntity",
    "bill/BillType",
    "bill/PayerAccountId",
    "lineItem/UsageAccountId",
    "lineItem/LineItemType",
    "lineItem/UsageStartDate",
    "lineItem/ProductCode",
    "lineItem/UsageType",
    "lineItem/Operation",
    "lineItem/AvailabilityZone",
    "lineItem/ResourceId",
    "lineItem/UsageAmount",
    "lineItem/NormalizationFactor",
    "lineItem/NormalizedUsageAmount",
    "lineItem/CurrencyCode",
    "lineItem/UnblendedRate",
    "lineItem/UnblendedCost",
    "lineItem/BlendedRate",
    "lineItem/BlendedCost",
    "lineItem/LineItemDescription",
    "lineItem/TaxType",
    "product/fromLocation",
    "product/group",
    "product/location",
    "product/productFamily",
    "product/region",
    "product/servicecode",
    "product/sku",
    "product/storageClass",
    "product/toLocation",
    "product/transferType",
    "pricing/currency",
    "pricing/publicOnDemandRate",
    "pricing/term",
    "pricing/unit",
    "reservation/SubscriptionId",
    "savingsPlan/SavingsPlanARN",
    "resourceTags/user:Name",
    "resourceTags/user:environment",
    "resourceTags/user:officex_purchase_id",
]


@dataclass(frozen=True)
class LineKind:
    """One kind of line item: the static columns around the few that vary per row."""

    weight: int
    product: str
    usage_type: str
    operation: str
    family: str
    description: str
    unit: str
    line_type: str = "Usage"
    s3: bool = True
    resource: str = "bucket"  # "bucket" | "none" | "instance"
    negative: bool = False


REQUESTS_GET = '"$0.004 per 10,000 GET and all other requests"'
REQUESTS_PUT = '"$0.005 per 1,000 PUT, COPY, POST, or LIST requests"'
KINDS = [
    LineKind(300, "AmazonS3", "USW2-Requests-Tier2", "ReadLocation", "API Request", REQUESTS_GET, "Requests"),
    LineKind(150, "AmazonS3", "Requests-Tier1", "PutObject", "API Request", REQUESTS_PUT, "Requests"),
    LineKind(
        150,
        "AmazonS3",
        "USE1-CAN1-AWS-Out-Bytes",
        "PutObject",
        "Data Transfer",
        '"$0.02 per GB - US East data transfer to Canada"',
        "GB",
    ),
    LineKind(
        100,
        "AmazonS3",
        "USW2-DataTransfer-Out-Bytes",
        "GetObject",
        "Data Transfer",
        '"$0.09 per GB - first 10 TB / month data transfer out"',
        "GB",
    ),
    LineKind(
        150,
        "AmazonS3",
        "USW2-TimedStorage-ByteHrs",
        "StandardStorage",
        "Storage",
        '"$0.023 per GB - first 50 TB / month of storage used"',
        "GB-Mo",
    ),
    LineKind(
        30,
        "AmazonS3",
        "USW2-TimedStorage-GlacierByteHrs",
        "GlacierStorage",
        "Storage",
        '"$0.004 per GB-Month of storage, Glacier"',
        "GB-Mo",
    ),
    LineKind(
        20,
        "AmazonS3",
        "USW2-EarlyDelete-ByteHrs",
        "DeleteObject",
        "Fee",
        '"Prorated storage, objects deleted early"',
        "GB-Mo",
    ),
    LineKind(
        10,
        "AmazonS3",
        "USW2-Requests-Tier2",
        "ReadLocation",
        "API Request",
        '"Credit: AWS Promotional Credit, applied to S3"',
        "Requests",
        line_type="Credit",
        negative=True,
    ),
    LineKind(
        10,
        "AmazonS3",
        "USW2-Requests-Tier1",
        "PutObject",
        "API Request",
        REQUESTS_PUT,
        "Requests",
        resource="none",
    ),
    LineKind(
        50,
        "AmazonEC2",
        "USW2-BoxUsage:t3.micro",
        "RunInstances",
        "Compute Instance",
        '"$0.0104 per On Demand Linux t3.micro Hour"',
        "Hrs",
        s3=False,
        resource="instance",
    ),
    LineKind(
        29,
        "AmazonCloudWatch",
        "USW2-CW:Requests",
        "GetMetricData",
        "Metric",
        '"$0.01 per 1,000 metrics requested"',
        "Metrics",
        s3=False,
        resource="none",
    ),
    LineKind(
        1, "AmazonS3", "", "", "", '"Tax for product code AmazonS3"', "", line_type="Tax", resource="none"
    ),
]


@dataclass
class FileFacts:
    path: str
    rows: int
    buckets: int
    uncompressed_bytes: int
    compressed_bytes: int
    s3_rows: int
    attributed_units: int  # Σ amounts of the S3 rows with a bucket, in 1e-10 USD
    seconds_to_generate: float
    version: int = FORMAT_VERSION


def _amount(units: int, scientific: bool) -> str:
    """``units`` × 1e-10 USD as AWS writes it: ``0.0000000181`` or ``1.81E-8``."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    if scientific and units:
        digits = str(units)
        mantissa = digits[0] + ("." + digits[1:].rstrip("0") if digits[1:].rstrip("0") else "")
        return f"{sign}{mantissa}E-{10 - (len(digits) - 1)}"
    return f"{sign}{units // 10**10}.{units % 10**10:010d}"


def generate(path: Path, rows: int, buckets: int, seed: int = 6) -> FileFacts:
    started = time.perf_counter()
    rng = random.Random(seed)
    choices = [kind for kind in KINDS for _ in range(kind.weight)]
    tmp = path.with_suffix(".partial")
    s3_rows = attributed = written = 0
    header = ",".join(COLUMNS) + "\n"
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
        out.write(header.encode())
        written += len(header)
        batch: list[str] = []
        for number in range(rows):
            kind = choices[rng.randrange(len(choices))]
            bucket_no = rng.randrange(buckets)
            day = rng.randrange(1, 31)
            hour = rng.randrange(24)
            units = rng.randrange(1, 50_000_000)
            if kind.negative:
                units = -units
            if kind.resource == "bucket":
                resource = f"officex-{bucket_no:05d}-data"
                tag = f"P{bucket_no:05d}" if bucket_no % 3 == 0 else ""
                name = f"officex bucket {bucket_no}"
            elif kind.resource == "instance":
                resource, tag, name = f"i-0{bucket_no:016x}", "", "worker, batch"
            else:
                resource, tag, name = "", "", ""
            if kind.s3:
                s3_rows += 1
                if kind.resource == "bucket":
                    attributed += units
            cost = _amount(units, rng.random() < 0.15)
            start = (
                f"2023-11-{day:02d}T{hour:02d}:00:00.000Z"
                if hour % 5
                else f"2023-11-{day:02d}T{hour:02d}:00:00Z"
            )
            batch.append(
                f"{number:012x}abcdabcdabcdabcd{bucket_no:05d},,"
                '"Amazon Web Services, Inc.",AWS,Anniversary,123412340534,123412340534,'
                f"{kind.line_type},{start},{kind.product},{kind.usage_type},{kind.operation},,{resource},"
                f"{units % 997}.{units % 1000:03d},0,0,USD,0.0000004,{cost},0.0000004,{cost},"
                f"{kind.description},,,"
                f"S3-API-Tier2,US West (Oregon),{kind.family},us-west-2,{kind.product},WP9ANXZGBYYSGJEA,,,,"
                f'USD,0.0000004,OnDemand,{kind.unit},{bucket_no},,"{name}",production,{tag}\n'
            )
            if len(batch) == 2000:
                chunk = "".join(batch)
                out.write(chunk.encode())
                written += len(chunk)
                batch.clear()
        chunk = "".join(batch)
        out.write(chunk.encode())
        written += len(chunk)
    tmp.replace(path)
    return FileFacts(
        path=str(path),
        rows=rows,
        buckets=buckets,
        uncompressed_bytes=written,
        compressed_bytes=path.stat().st_size,
        s3_rows=s3_rows,
        attributed_units=attributed,
        seconds_to_generate=round(time.perf_counter() - started, 1),
    )


def cached_file(cache_dir: Path, rows: int, buckets: int, regenerate: bool) -> FileFacts:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"legacy-cur-{rows}r-{buckets}b-v{FORMAT_VERSION}.csv.gz"
    facts_path = path.with_name(path.name + ".json")
    if not regenerate and path.exists() and facts_path.exists():
        facts = FileFacts(**json.loads(facts_path.read_text()))
        if facts.compressed_bytes == path.stat().st_size:
            return facts
    print(f"generating {path} ({rows:,} rows, {buckets:,} buckets)…", file=sys.stderr, flush=True)
    facts = generate(path, rows, buckets)
    facts_path.write_text(json.dumps(asdict(facts), indent=2))
    return facts


# ---------------------------------------------------------------------- engines (children)
def run_ours(facts: FileFacts, memory_limit: str | None, threads: int | None) -> dict[str, Any]:
    from billing.adapters.cost_export_reader import ReaderSettings, read_delivery  # noqa: PLC0415
    from billing.domain.cost_export import Delivery, ExportFormat  # noqa: PLC0415

    delivery = Delivery(
        format=ExportFormat.LEGACY_CUR,
        report_name="bench",
        billing_period=PERIOD,
        delivery_id="bench",
        delivered_at=datetime(2023, 11, 30, tzinfo=UTC),
        bucket="bench",
        manifest_key="bench/20231101-20231201/bench-Manifest.json",
        data_keys=(Path(facts.path).name,),
    )
    defaults = ReaderSettings()
    settings = ReaderSettings(
        memory_limit=memory_limit or defaults.memory_limit, threads=threads or defaults.threads
    )
    started = time.perf_counter()
    parsed = read_delivery(delivery, lambda _key: open(facts.path, "rb"), settings)  # noqa: SIM115
    keys = 0
    total = Decimal(0)
    for item in parsed.costs:
        keys += 1
        total += item.cost
    seconds = time.perf_counter() - started
    expected = facts.attributed_units * UNIT
    return {
        "rows": parsed.rows_read,
        "seconds": seconds,
        "groups": keys,
        "s3_rows": parsed.s3_rows,
        "total": str(total),
        "check": "ok" if total == expected and parsed.rows_read == facts.rows else f"expected {expected}",
    }


def run_duckdb(facts: FileFacts) -> dict[str, Any]:
    import duckdb  # noqa: PLC0415

    started = time.perf_counter()
    connection = duckdb.connect()
    groups = connection.execute(
        """SELECT "lineItem/ResourceId" AS bucket, CAST("lineItem/UsageStartDate" AS DATE) AS day,
                  sum("lineItem/UnblendedCost") AS cost
           FROM read_csv(?) WHERE "lineItem/ProductCode" = 'AmazonS3' AND "lineItem/ResourceId" IS NOT NULL
             AND "lineItem/LineItemType" <> 'Tax'
           GROUP BY ALL""",
        [facts.path],
    ).fetchall()
    seconds = time.perf_counter() - started
    total = sum(float(cost) for _, _, cost in groups)
    expected = float(facts.attributed_units * UNIT)
    return {
        "rows": facts.rows,
        "seconds": seconds,
        "groups": len(groups),
        "total": repr(total),
        "check": "ok" if abs(total - expected) <= 1e-6 * max(1.0, abs(expected)) else f"expected {expected}",
    }


_DATA_TRANSFER = re.compile(r"DataTransfer|-(In|Out)-A?Bytes")


def run_python_csv(facts: FileFacts, limit: int) -> dict[str, Any]:
    started = time.perf_counter()
    sums: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
    rows = 0
    with gzip.open(facts.path, "rt", encoding="utf-8", newline="") as text:
        reader = csv.reader(text)
        header = next(reader)
        at = {name: index for index, name in enumerate(header)}
        product, usage_type, resource, cost, start, tag, line_type = (
            at[name]
            for name in (
                "lineItem/ProductCode",
                "lineItem/UsageType",
                "lineItem/ResourceId",
                "lineItem/UnblendedCost",
                "lineItem/UsageStartDate",
                "resourceTags/user:officex_purchase_id",
                "lineItem/LineItemType",
            )
        )
        for row in reader:
            rows += 1
            amount = Decimal(row[cost])
            if row[product] == "AmazonS3" and row[resource] and row[line_type] != "Tax":
                kind_text = row[usage_type]
                kind = (
                    "storage"
                    if "TimedStorage" in kind_text
                    else "requests"
                    if "Requests" in kind_text
                    else "data_transfer"
                    if _DATA_TRANSFER.search(kind_text)
                    else "other"
                )
                sums[(row[resource], row[tag], row[start][:10], kind)] += amount
            if rows >= limit:
                break
    return {"rows": rows, "seconds": time.perf_counter() - started, "groups": len(sums), "check": "ok"}


def child_main(args: argparse.Namespace) -> int:
    facts = FileFacts(**json.loads(Path(args.facts).read_text()))
    if args.child == "ours":
        result = run_ours(facts, args.memory_limit, args.threads)
    elif args.child == "duckdb":
        result = run_duckdb(facts)
    else:
        result = run_python_csv(facts, args.python_rows)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------- parent
def run_child(engine: str, facts_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", engine, "--facts", str(facts_path)]
    command += ["--python-rows", str(args.python_rows)]
    if args.memory_limit:
        command += ["--memory-limit", args.memory_limit]
    if args.threads:
        command += ["--threads", str(args.threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{engine} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    result["engine"] = engine
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


def warm_page_cache(path: str) -> float:
    started = time.perf_counter()
    with open(path, "rb") as handle:
        while handle.read(8 * 1024 * 1024):
            pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--buckets", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows over 200 buckets, one round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", default="ours,duckdb")
    parser.add_argument("--python-rows", type=int, default=500_000)
    parser.add_argument("--memory-limit", help="DuckDB memory_limit of our reader (default: ReaderSettings)")
    parser.add_argument("--threads", type=int, help="DuckDB threads of our reader (default: ReaderSettings)")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/cost-export-bench"))
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--enforce", action="store_true", help="exit 2 when a target is missed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--facts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.quick:
        args.rows, args.buckets, args.rounds = 20_000, 200, 1
        args.python_rows = min(args.python_rows, args.rows)

    facts = cached_file(args.cache_dir, args.rows, args.buckets, args.regenerate)
    facts_path = Path(facts.path + ".json")
    engines = [engine.strip() for engine in args.engines.split(",") if engine.strip()]
    load_before = os.getloadavg()[0]
    warm_seconds = warm_page_cache(facts.path)
    runs: list[dict[str, Any]] = []
    failed = False
    for round_no in range(args.rounds):
        order = engines if round_no % 2 == 0 else list(reversed(engines))
        for engine in order:
            try:
                result = run_child(engine, facts_path, args)
            except RuntimeError as error:
                print(error, file=sys.stderr)
                failed = True
                continue
            result["round"] = round_no + 1
            result["load_1m"] = os.getloadavg()[0]
            runs.append(result)
            failed = failed or result["check"] != "ok"

    def median(engine: str, field: str) -> float | None:
        values = [run[field] for run in runs if run["engine"] == engine]
        return statistics.median(values) if values else None

    ours_rate, duck_rate = median("ours", "rows_per_s"), median("duckdb", "rows_per_s")
    ours_rss = max((run["peak_rss_mb"] for run in runs if run["engine"] == "ours"), default=None)
    ratio = ours_rate / duck_rate if ours_rate and duck_rate else None
    summary = {
        "file": asdict(facts),
        "load_1m_before": load_before,
        "page_cache_warm_seconds": round(warm_seconds, 2),
        "settings": {"memory_limit": args.memory_limit or "default", "threads": args.threads or "default"},
        "runs": runs,
        "ours_rows_per_s": ours_rate,
        "duckdb_rows_per_s": duck_rate,
        "ratio": ratio,
        "ours_peak_rss_mb": ours_rss,
        "targets": {"peak_rss_mb": RSS_TARGET_MB, "ratio": RATIO_TARGET},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"file: {facts.rows:,} rows, {facts.uncompressed_bytes / 1e9:.2f} GB uncompressed,"
            f" {facts.compressed_bytes / 1e6:.0f} MB gzip, {facts.buckets:,} buckets;"
            f" load before {load_before:.2f}"
        )
        print(
            f"{'round':>5} {'engine':<10} {'rows/s':>12} {'seconds':>8} {'peak RSS MB':>11}"
            f" {'CPU s':>6} check"
        )
        for run in runs:
            print(
                f"{run['round']:>5} {run['engine']:<10} {run['rows_per_s']:>12,.0f} {run['seconds']:>8.2f}"
                f" {run['peak_rss_mb']:>11.0f} {run['cpu_seconds']:>6.1f} {run['check']}"
            )
        if ratio is not None:
            print(f"ratio ours/duckdb (median rows/s): {ratio:.2f} (target ≥ {RATIO_TARGET})")
        if ours_rss is not None:
            print(f"peak RSS ours: {ours_rss:.0f} MB (target ≤ {RSS_TARGET_MB:.0f})")
    if failed:
        return 1
    missed = (ratio is not None and ratio < RATIO_TARGET) or (
        ours_rss is not None and ours_rss > RSS_TARGET_MB
    )
    return 2 if args.enforce and missed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
