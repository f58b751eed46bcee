"""The cost-export reader on real files (tests/fixtures/billing-exports) and on files built here.

Expected values are computed independently, with the ``csv`` module and ``Decimal``.
"""

from __future__ import annotations

import csv
import gc
import gzip
import io
import json
import os
import re
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import IO

import duckdb
import pytest

from billing.adapters import cost_export_reader
from billing.adapters.cost_export_reader import ReaderSettings, read_delivery
from billing.domain.cost_export import (
    BucketDayCost,
    ChargeKey,
    ChargeKind,
    Delivery,
    DeliveryRejected,
    ExportFormat,
    ParsedDelivery,
    UnattributedCost,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "billing-exports"
LEGACY_SAMPLE = FIXTURES / "cur1.0_daily_anonymized_2023-11_focus-converters.csv"
FOCUS_SAMPLE = FIXTURES / "focus-1.0_finops-sample_1000rows.csv"
NOVEMBER = date(2023, 11, 1)
SEPTEMBER = date(2024, 9, 1)
DATA_KEY = "officex-s3-00001.csv.gz"  # a legacy CUR delivery's one data file
_DATA_TRANSFER = re.compile(r"DataTransfer|-(In|Out)-A?Bytes")


def make_delivery(period: date, keys: Iterable[str], export_format: ExportFormat) -> Delivery:
    return Delivery(
        format=export_format,
        report_name="officex-s3",
        billing_period=period,
        delivery_id="assembly-1",
        delivered_at=datetime(2024, 1, 1, tzinfo=UTC),
        bucket="vendor-billing-cur",
        manifest_key="cur/officex-s3/Manifest.json",
        data_keys=tuple(keys),
    )


def opener(folder: Path) -> Callable[[str], IO[bytes]]:
    return lambda key: (folder / key).open("rb")


def read(
    folder: Path,
    keys: Iterable[str],
    period: date,
    export_format: ExportFormat = ExportFormat.LEGACY_CUR,
    settings: ReaderSettings | None = None,
) -> ParsedDelivery:
    return read_delivery(make_delivery(period, keys, export_format), opener(folder), settings)


def rejection(
    folder: Path,
    keys: Iterable[str],
    period: date,
    export_format: ExportFormat = ExportFormat.LEGACY_CUR,
    settings: ReaderSettings | None = None,
) -> DeliveryRejected:
    with pytest.raises(DeliveryRejected) as rejected:
        read(folder, keys, period, export_format, settings)
    return rejected.value


def kind_of(usage_type: str) -> ChargeKind:
    """The charge-kind rule, written again in Python."""
    if "TimedStorage" in usage_type:
        return ChargeKind.STORAGE
    if "Requests" in usage_type:
        return ChargeKind.REQUESTS
    if _DATA_TRANSFER.search(usage_type):
        return ChargeKind.DATA_TRANSFER
    return ChargeKind.OTHER


def write_gzip_csv(path: Path, header: list[str], rows: Iterable[list[str]], *, level: int = 6) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(text.getvalue().encode(), compresslevel=level))


def rejection_of_gzip_csv(
    folder: Path, header: list[str], rows: Iterable[list[str]], settings: ReaderSettings | None = None
) -> DeliveryRejected:
    """``header`` and ``rows`` as the November delivery's one data file (``DATA_KEY``), rejected."""
    write_gzip_csv(folder / DATA_KEY, header, rows)
    return rejection(folder, [DATA_KEY], NOVEMBER, settings=settings)


def legacy_sample() -> tuple[list[str], list[list[str]]]:
    with LEGACY_SAMPLE.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, list(reader)


def unattributed_map(items: Iterable[UnattributedCost]) -> dict[tuple[str, str], tuple[Decimal, int]]:
    return {(item.reason, item.product): (item.cost, item.rows) for item in items}


# ---------------------------------------------------------------- the real legacy CUR sample
def test_real_legacy_cur_sample_is_read_to_the_end_then_rejected_without_resource_ids(tmp_path: Path) -> None:
    header, rows = legacy_sample()
    assert "lineItem/ResourceId" not in header
    (tmp_path / DATA_KEY).write_bytes(gzip.compress(LEGACY_SAMPLE.read_bytes()))

    rejected = rejection(tmp_path, [DATA_KEY], NOVEMBER)

    assert rejected.reason.startswith(
        "officex-s3-00001.csv.gz has no resource id column (lineItem/ResourceId)"
    )
    assert "Include resource IDs" in rejected.reason
    assert "nothing was charged" in rejected.reason
    assert "1,281 rows, 799 of them AmazonS3 (422 data transfer)" in rejected.reason
    # Every row was read, and the S3 rows (data transfer included) were recognised.
    column = {name: index for index, name in enumerate(header)}
    s3 = [row for row in rows if row[column["lineItem/ProductCode"]] == "AmazonS3"]
    transfer = [row for row in s3 if row[column["product/productFamily"]] == "Data Transfer"]
    assert (len(rows), len(s3), len(transfer)) == (1281, 799, 422)
    stats = rejected.stats
    assert stats is not None
    assert (stats.rows_read, stats.s3_rows) == (1281, 799)
    assert stats.s3_rows_by_kind[ChargeKind.DATA_TRANSFER] == 422
    assert sum(stats.s3_rows_by_kind.values()) == 799
    assert stats.s3_cost == sum((Decimal(row[column["lineItem/UnblendedCost"]]) for row in s3), Decimal(0))
    assert any("E-" in row[column["lineItem/UnblendedCost"]] for row in s3)  # scientific notation was read


BUCKETS = ("officex-alpha", "officex-beta", "arn:aws:s3:::officex-gamma", "arn:aws:s3:::officex-delta/logs/")
TAGS = {"officex-alpha": "P-alpha", "officex-gamma": "P-gamma"}


def legacy_with_resource_ids() -> tuple[list[str], list[list[str]]]:
    """The real sample with ``lineItem/ResourceId`` and the purchase tag column added."""
    header, rows = legacy_sample()
    column = {name: index for index, name in enumerate(header)}
    at = column["lineItem/AvailabilityZone"] + 1
    new_header = [*header[:at], "lineItem/ResourceId", *header[at:], "resourceTags/user:officex_purchase_id"]
    new_rows = []
    for number, row in enumerate(rows):
        product = row[column["lineItem/ProductCode"]]
        resource, tag = "", ""
        if product == "AmazonS3" and number % 50 != 7:  # every 50th S3 row has no resource id
            resource = BUCKETS[number % len(BUCKETS)]
            tag = TAGS.get(resource.removeprefix("arn:aws:s3:::"), "")
        elif product == "AmazonEC2":
            resource = "i-0123456789abcdef0"
        new_rows.append([*row[:at], resource, *row[at:], tag])
    return new_header, new_rows


def expected_from(
    header: list[str], rows: list[list[str]]
) -> tuple[set[BucketDayCost], dict[tuple[str, str], tuple[Decimal, int]]]:
    column = {name: index for index, name in enumerate(header)}
    costs: dict[ChargeKey, Decimal] = defaultdict(Decimal)
    unattributed: dict[tuple[str, str], tuple[Decimal, int]] = {}
    for row in rows:
        product = row[column["lineItem/ProductCode"]]
        cost = Decimal(row[column["lineItem/UnblendedCost"]])
        resource = row[column["lineItem/ResourceId"]]
        if row[column["lineItem/LineItemType"]] == "Tax":
            reason = "tax"
        elif product != "AmazonS3":
            reason = "not_s3"
        elif not resource:
            reason = "s3_without_resource"
        else:
            bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
            key = ChargeKey(
                bucket=bucket,
                purchase_tag=row[column["resourceTags/user:officex_purchase_id"]] or None,
                usage_day=date.fromisoformat(row[column["lineItem/UsageStartDate"]][:10]),
                kind=kind_of(row[column["lineItem/UsageType"]]),
            )
            costs[key] += cost
            continue
        total, count = unattributed.get((reason, product), (Decimal(0), 0))
        unattributed[(reason, product)] = (total + cost, count + 1)
    return {BucketDayCost(key, cost) for key, cost in costs.items()}, unattributed


def test_real_legacy_cur_sample_with_resource_ids_is_attributed_per_bucket_and_day(tmp_path: Path) -> None:
    header, rows = legacy_with_resource_ids()
    write_gzip_csv(tmp_path / DATA_KEY, header, rows)

    parsed = read(tmp_path, [DATA_KEY], NOVEMBER)

    expected_costs, expected_unattributed = expected_from(header, rows)
    assert (parsed.rows_read, parsed.s3_rows) == (1281, 799)
    assert parsed.s3_rows_by_kind[ChargeKind.DATA_TRANSFER] == 422
    assert isinstance(parsed.costs, Iterator)  # streamed, not a list
    costs = set(parsed.costs)
    assert costs == expected_costs
    assert {item.key.bucket for item in costs} == {
        "officex-alpha",
        "officex-beta",
        "officex-gamma",
        "officex-delta",
    }
    assert {item.key.kind for item in costs} == set(ChargeKind)
    assert {item.key.purchase_tag for item in costs} == {"P-alpha", "P-gamma", None}
    assert unattributed_map(parsed.unattributed) == expected_unattributed
    tax_rows = sum(rows for (reason, _), (_, rows) in expected_unattributed.items() if reason == "tax")
    assert tax_rows == 12
    assert ("s3_without_resource", "AmazonS3") in expected_unattributed
    # Nothing is lost: attributed + unattributed == every row's cost.
    every_cost = sum((Decimal(row[header.index("lineItem/UnblendedCost")]) for row in rows), Decimal(0))
    assert (
        sum((c.cost for c in costs), Decimal(0)) + sum((u.cost for u in parsed.unattributed), Decimal(0))
        == every_cost
    )


# ---------------------------------------------------------------- the real FOCUS sample
def focus_sample() -> tuple[list[str], list[dict[str, str]]]:
    with FOCUS_SAMPLE.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_real_focus_sample_parses_with_nulls_and_a_netting_credit() -> None:
    _, rows = focus_sample()
    parsed = read(FIXTURES, [FOCUS_SAMPLE.name], SEPTEMBER, ExportFormat.FOCUS)

    s3 = [row for row in rows if row["ServiceName"] == "Amazon Simple Storage Service"]
    assert (parsed.rows_read, parsed.s3_rows) == (1000, len(s3)) == (1000, 36)
    assert {row["ResourceId"] for row in s3} == {"NULL"}  # the text NULL is a missing value
    assert list(parsed.costs) == []
    found = unattributed_map(parsed.unattributed)
    s3_cost = sum((Decimal(row["BilledCost"]) for row in s3), Decimal(0))
    # S3 rows are summarised under the product code AmazonS3, whatever the column set calls the service.
    assert found[("s3_without_resource", "AmazonS3")] == (s3_cost, 36)
    assert not any("NULL" in product for _, product in found)
    ec2 = [row for row in rows if row["ServiceName"] == "Amazon Elastic Compute Cloud"]
    credit = [row for row in ec2 if row["ChargeCategory"] == "Credit"]
    assert [row["BilledCost"] for row in credit] == ["-2.61370000000"]
    ec2_cost = sum((Decimal(row["BilledCost"]) for row in ec2), Decimal(0))
    assert found[("not_s3", "Amazon Elastic Compute Cloud")] == (ec2_cost, len(ec2))
    assert ec2_cost < sum((Decimal(row["BilledCost"]) for row in ec2 if row not in credit), Decimal(0))
    every_cost = sum((Decimal(row["BilledCost"]) for row in rows), Decimal(0))
    assert sum((item.cost for item in parsed.unattributed), Decimal(0)) == every_cost
    assert sum(item.rows for item in parsed.unattributed) == 1000


def test_real_focus_sample_with_resource_ids_is_attributed_by_unit_and_description(tmp_path: Path) -> None:
    """FOCUS 1.0 without AWS's x_ columns: the charge kind comes from the unit and description."""
    header, rows = focus_sample()
    for number, row in enumerate(rows):
        if row["ServiceName"] == "Amazon Simple Storage Service":
            row["ResourceId"] = f"officex-{number % 3}"
    write_gzip_csv(tmp_path / "focus-00001.csv.gz", header, ([row[name] for name in header] for row in rows))

    parsed = read(tmp_path, ["focus-00001.csv.gz"], SEPTEMBER, ExportFormat.FOCUS)

    costs = list(parsed.costs)
    s3 = [row for row in rows if row["ServiceName"] == "Amazon Simple Storage Service"]
    assert sum((item.cost for item in costs), Decimal(0)) == sum(
        (Decimal(r["BilledCost"]) for r in s3), Decimal(0)
    )
    assert {item.key.bucket for item in costs} == {"officex-0", "officex-1", "officex-2"}
    assert all(item.key.purchase_tag is None for item in costs)
    assert parsed.s3_rows_by_kind == {
        ChargeKind.DATA_TRANSFER: 22,  # "… data transfer …", "…-AWS-Out-Bytes …"
        ChargeKind.REQUESTS: 11,  # unit Requests
        ChargeKind.STORAGE: 2,  # unit GB-Months
        ChargeKind.OTHER: 1,  # "USD0.02 per GB for  in Middle East (Bahrain)": nothing says what it is
    }
    by_day = Counter(item.key.usage_day for item in costs)
    assert all(day.month == 9 for day in by_day)


# ---------------------------------------------------------------- one usage, three column sets
@dataclass(frozen=True)
class Usage:
    resource: str  # "" = none
    tag: str  # "" = none
    start: datetime  # UTC
    product: str
    usage_type: str
    cost: str  # as AWS writes it
    line_type: str = "Usage"


USAGE = [
    Usage(
        "officex-alpha",
        "P-alpha",
        datetime(2024, 9, 1, 0, 0),
        "AmazonS3",
        "TimedStorage-ByteHrs",
        "0.0000231233",
    ),
    Usage(
        "officex-alpha", "P-alpha", datetime(2024, 9, 1, 13, 0), "AmazonS3", "TimedStorage-ByteHrs", "1.81E-8"
    ),
    Usage("officex-alpha", "P-alpha", datetime(2024, 9, 2, 1, 0), "AmazonS3", "Requests-Tier1", "0.0045"),
    Usage(
        "officex-alpha",
        "P-alpha",
        datetime(2024, 9, 2, 0, 0),
        "AmazonS3",
        "USE1-CAN1-AWS-Out-Bytes",
        "2.5E-7",
    ),
    Usage(
        "officex-alpha", "P-alpha", datetime(2024, 9, 2, 5, 0), "AmazonS3", "DataTransfer-Out-Bytes", "0.09"
    ),
    Usage(
        "officex-alpha",
        "P-alpha",
        datetime(2024, 9, 2, 5, 0),
        "AmazonS3",
        "Requests-Tier1",
        "-0.0045",
        "Credit",
    ),
    Usage(
        "arn:aws:s3:::officex-beta",
        "",
        datetime(2024, 9, 3, 23, 0),
        "AmazonS3",
        "USW2-Requests-Tier2",
        "1.3E-9",
    ),
    Usage("officex-beta", "", datetime(2024, 9, 3, 7, 0), "AmazonS3", "USW2-EarlyDelete-ByteHrs", "0.0001"),
    Usage(
        "officex-beta",
        "",
        datetime(2024, 9, 3, 8, 0),
        "AmazonS3",
        "USW2-Requests-Tier2",
        "-0.00002",
        "BundledDiscount",
    ),
    Usage(
        "officex-gamma", "P-gamma", datetime(2024, 9, 30, 23, 0), "AmazonS3", "TimedStorage-ByteHrs", "12.5"
    ),
    Usage("", "", datetime(2024, 9, 4, 0, 0), "AmazonS3", "Requests-Tier1", "0.0004"),
    Usage("i-0abc", "", datetime(2024, 9, 4, 0, 0), "AmazonEC2", "BoxUsage:t3.micro", "0.0104"),
    Usage("", "", datetime(2024, 9, 1, 0, 0), "AmazonS3", "", "0.07", "Tax"),
    Usage("officex-gamma", "", datetime(2024, 8, 31, 23, 0), "AmazonS3", "TimedStorage-ByteHrs", "0.5"),
]
FOCUS_CATEGORY = {"Usage": "Usage", "Credit": "Credit", "BundledDiscount": "Adjustment", "Tax": "Tax"}
SERVICE_NAME = {"AmazonS3": "Amazon Simple Storage Service", "AmazonEC2": "Amazon Elastic Compute Cloud"}


def expected_usage() -> tuple[set[BucketDayCost], dict[tuple[str, str], tuple[Decimal, int]]]:
    costs: dict[ChargeKey, Decimal] = defaultdict(Decimal)
    unattributed: dict[tuple[str, str], tuple[Decimal, int]] = {}
    for usage in USAGE:
        if usage.line_type == "Tax":
            reason = "tax"
        elif usage.product != "AmazonS3":
            reason = "not_s3"
        elif not usage.resource:
            reason = "s3_without_resource"
        elif usage.start.month != SEPTEMBER.month:
            reason = "s3_outside_billing_period"
        else:
            key = ChargeKey(
                bucket=usage.resource.removeprefix("arn:aws:s3:::"),
                purchase_tag=usage.tag or None,
                usage_day=usage.start.date(),
                kind=kind_of(usage.usage_type),
            )
            costs[key] += Decimal(usage.cost)
            continue
        total, count = unattributed.get((reason, usage.product), (Decimal(0), 0))
        unattributed[(reason, usage.product)] = (total + Decimal(usage.cost), count + 1)
    return {BucketDayCost(key, cost) for key, cost in costs.items()}, unattributed


def write_legacy(folder: Path) -> list[str]:
    header = [
        "identity/LineItemId",
        "bill/InvoicingEntity",
        "lineItem/LineItemType",
        "lineItem/UsageStartDate",
        "lineItem/ProductCode",
        "lineItem/UsageType",
        "lineItem/ResourceId",
        "lineItem/UnblendedCost",
        "lineItem/LineItemDescription",
        "resourceTags/user:Name",
        "resourceTags/user:officex_purchase_id",
    ]
    rows = [
        [
            f"line-{number}",
            "Amazon Web Services, Inc.",
            usage.line_type,
            usage.start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            usage.product,
            usage.usage_type,
            usage.resource,
            usage.cost,
            "$0.004 per 10,000 GET and all other requests",
            "name, with a comma",
            usage.tag,
        ]
        for number, usage in enumerate(USAGE)
    ]
    write_gzip_csv(folder / "legacy-00001.csv.gz", header, rows[:7])
    write_gzip_csv(folder / "legacy-00002.csv.gz", header, rows[7:])
    return ["legacy-00001.csv.gz", "legacy-00002.csv.gz"]


def cur2_start(usage: Usage, number: int) -> str:
    if number % 3 == 0:  # the same instant with an offset
        return usage.start.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=2))).isoformat()
    return usage.start.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_cur2(folder: Path) -> list[str]:
    header = [
        "identity_line_item_id",
        "line_item_line_item_type",
        "line_item_usage_start_date",
        "line_item_product_code",
        "line_item_usage_type",
        "line_item_resource_id",
        "line_item_unblended_cost",
        "resource_tags",
    ]
    rows = [
        [
            f"line-{number}",
            usage.line_type,
            cur2_start(usage, number),
            usage.product,
            usage.usage_type,
            usage.resource,
            usage.cost,
            json.dumps({"user_officex_purchase_id": usage.tag, "user_name": "x, y"} if usage.tag else {}),
        ]
        for number, usage in enumerate(USAGE)
    ]
    write_gzip_csv(folder / "cur2-00001.csv.gz", header, rows)
    return ["cur2-00001.csv.gz"]


def write_cur2_parquet(folder: Path) -> list[str]:
    """CUR 2.0 as Parquet: doubles for amounts, timestamps, a map of resource tags."""
    connection = duckdb.connect()
    connection.execute(
        """CREATE TABLE usage (line_item_line_item_type VARCHAR, line_item_usage_start_date TIMESTAMP,
        line_item_product_code VARCHAR, line_item_usage_type VARCHAR, line_item_resource_id VARCHAR,
        line_item_unblended_cost DOUBLE, resource_tags MAP(VARCHAR, VARCHAR))"""
    )
    for usage in USAGE:
        connection.execute(
            "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, MAP(?::VARCHAR[], ?::VARCHAR[]))",
            [
                usage.line_type,
                usage.start,
                usage.product,
                usage.usage_type or None,
                usage.resource or None,
                float(usage.cost),
                ["user_officex_purchase_id"] if usage.tag else [],
                [usage.tag] if usage.tag else [],
            ],
        )
    path = folder / "cur2-00001.snappy.parquet"
    connection.execute(f"COPY usage TO '{path}' (FORMAT parquet)")
    connection.close()
    return [path.name]


def write_focus(folder: Path) -> list[str]:
    header = [
        "BilledCost",
        "ChargeCategory",
        "ChargeDescription",
        "ChargePeriodStart",
        "ChargePeriodEnd",
        "ProviderName",
        "ResourceId",
        "ServiceName",
        "Tags",
        "x_ServiceCode",
        "x_UsageType",
    ]
    rows = [
        [
            usage.cost,
            FOCUS_CATEGORY[usage.line_type],
            "$0.004 per 10,000 GET and all other requests",
            usage.start.strftime("%Y-%m-%d %H:%M:%S"),
            "NULL",
            "AWS",
            usage.resource or "NULL",
            SERVICE_NAME[usage.product],
            json.dumps({"user:officex_purchase_id": usage.tag}) if usage.tag else "NULL",
            usage.product,
            usage.usage_type or "NULL",
        ]
        for usage in USAGE
    ]
    write_gzip_csv(folder / "focus-00001.csv.gz", header, rows)
    return ["focus-00001.csv.gz"]


@pytest.mark.parametrize(
    ("writer", "export_format"),
    [
        (write_legacy, ExportFormat.LEGACY_CUR),
        (write_cur2, ExportFormat.CUR2),
        (write_cur2_parquet, ExportFormat.CUR2),
        (write_focus, ExportFormat.FOCUS),
    ],
    ids=["legacy-cur", "cur2-csv", "cur2-parquet", "focus"],
)
def test_the_same_usage_gives_the_same_charges_in_every_column_set(
    tmp_path: Path, writer: Callable[[Path], list[str]], export_format: ExportFormat
) -> None:
    keys = writer(tmp_path)

    parsed = read(tmp_path, keys, SEPTEMBER, export_format)

    expected_costs, expected_unattributed = expected_usage()
    assert set(parsed.costs) == expected_costs
    assert unattributed_map(parsed.unattributed) == expected_unattributed
    assert parsed.rows_read == len(USAGE)
    assert parsed.s3_rows == sum(1 for usage in USAGE if usage.product == "AmazonS3")


def test_expected_usage_covers_every_rule() -> None:
    costs, unattributed = expected_usage()
    assert {item.key.kind for item in costs} == set(ChargeKind)
    assert {reason for reason, _ in unattributed} == {
        "tax",
        "not_s3",
        "s3_without_resource",
        "s3_outside_billing_period",
    }
    alpha_requests = [
        c for c in costs if c.key.bucket == "officex-alpha" and c.key.kind is ChargeKind.REQUESTS
    ]
    # The credit nets into the same key: a key that costs nothing now (a restatement to zero).
    assert [c.cost for c in alpha_requests] == [Decimal(0)]


# ---------------------------------------------------------------- broken files
@pytest.fixture
def legacy_variant() -> tuple[list[str], list[list[str]]]:
    return legacy_with_resource_ids()


def test_a_gzip_file_cut_in_the_middle_is_rejected_naming_it(
    tmp_path: Path, legacy_variant: tuple[list[str], list[list[str]]]
) -> None:
    header, rows = legacy_variant
    write_gzip_csv(tmp_path / "whole.csv.gz", header, rows)
    data = (tmp_path / "whole.csv.gz").read_bytes()
    (tmp_path / "officex-s3-00002.csv.gz").write_bytes(data[: len(data) // 2])
    keys = ["whole.csv.gz", "officex-s3-00002.csv.gz"]

    rejected = rejection(tmp_path, keys, NOVEMBER)

    assert rejected.reason.startswith("officex-s3-00002.csv.gz: ")
    assert "truncated" in rejected.reason


def test_a_corrupt_gzip_file_is_rejected_naming_it(
    tmp_path: Path, legacy_variant: tuple[list[str], list[list[str]]]
) -> None:
    header, rows = legacy_variant
    write_gzip_csv(tmp_path / "whole.csv.gz", header, rows)
    data = bytearray((tmp_path / "whole.csv.gz").read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0x5A
    (tmp_path / DATA_KEY).write_bytes(bytes(data))

    rejected = rejection(tmp_path, [DATA_KEY], NOVEMBER)

    assert rejected.reason.startswith("officex-s3-00001.csv.gz: ")


def test_gzip_corruption_that_still_inflates_is_caught_by_the_crc(
    tmp_path: Path, legacy_variant: tuple[list[str], list[list[str]]]
) -> None:
    """A changed digit in a stored (uncompressed) gzip block: DuckDB alone reads a different cost."""
    header, rows = legacy_variant
    write_gzip_csv(tmp_path / "good.csv.gz", header, rows, level=0)
    data = (tmp_path / "good.csv.gz").read_bytes()
    offset = data.index(b",1.81E-8,")
    (tmp_path / DATA_KEY).write_bytes(data[: offset + 1] + b"9" + data[offset + 2 :])
    with duckdb.connect() as connection:
        plain = connection.execute(
            "SELECT count(*) FROM read_csv(?, all_varchar=true, header=true)",
            [str(tmp_path / DATA_KEY)],
        ).fetchone()
    assert plain == (1281,)  # read without complaint
    with pytest.raises(zlib.error, match="incorrect data check"):
        zlib.decompress((tmp_path / DATA_KEY).read_bytes(), wbits=31)

    rejected = rejection(tmp_path, [DATA_KEY], NOVEMBER)

    assert rejected.reason == (
        "officex-s3-00001.csv.gz: corrupt gzip data (Error -3 while decompressing data: incorrect data check)"
    )


def test_a_file_that_is_not_gzip_is_rejected(tmp_path: Path) -> None:
    (tmp_path / DATA_KEY).write_bytes(b"identity/LineItemId,lineItem/UnblendedCost\n")
    rejected = rejection(tmp_path, [DATA_KEY], NOVEMBER)
    assert rejected.reason.startswith("officex-s3-00001.csv.gz: the header cannot be read")


def test_a_row_with_a_wrong_number_of_columns_is_rejected(
    tmp_path: Path, legacy_variant: tuple[list[str], list[list[str]]]
) -> None:
    header, rows = legacy_variant
    rows[100] = rows[100][:40]
    rejected = rejection_of_gzip_csv(tmp_path, header, rows)
    assert rejected.reason.startswith("officex-s3-00001.csv.gz: ")
    assert "CSV Error on Line: 102" in rejected.reason
    assert "Original Line" not in rejected.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("twelve", "1 row(s) have a lineItem/UnblendedCost that is not a number, e.g. 'twelve'"),
        ("1,5", "1 row(s) have a lineItem/UnblendedCost that is not a number, e.g. '1,5'"),
        ("", "1 row(s) have no lineItem/UnblendedCost"),
    ],
)
def test_an_amount_that_does_not_parse_is_rejected(
    tmp_path: Path, legacy_variant: tuple[list[str], list[list[str]]], value: str, reason: str
) -> None:
    header, rows = legacy_variant
    rows[5][header.index("lineItem/UnblendedCost")] = value
    rejected = rejection_of_gzip_csv(tmp_path, header, rows)
    assert rejected.reason == f"officex-s3-00001.csv.gz: {reason}"


def test_an_s3_usage_start_that_does_not_parse_is_rejected(
    tmp_path: Path, legacy_variant: tuple[list[str], list[list[str]]]
) -> None:
    header, rows = legacy_variant
    s3_row = next(row for row in rows if row[header.index("lineItem/ResourceId")].startswith("officex-"))
    s3_row[header.index("lineItem/UsageStartDate")] = "yesterday"
    rejected = rejection_of_gzip_csv(tmp_path, header, rows)
    assert rejected.reason == (
        "officex-s3-00001.csv.gz: 1 S3 row(s) have a lineItem/UsageStartDate that is not a time,"
        " e.g. 'yesterday'"
    )


def test_unknown_and_incomplete_column_sets_are_rejected(tmp_path: Path) -> None:
    write_gzip_csv(tmp_path / "a.csv.gz", ["Date", "Amount"], [["2024-09-01", "1"]])
    rejected = rejection(tmp_path, ["a.csv.gz"], SEPTEMBER)
    assert (
        rejected.reason
        == "a.csv.gz: the columns are neither legacy CUR, CUR 2.0 nor FOCUS (header: Date, Amount)"
    )
    write_gzip_csv(tmp_path / "b.csv.gz", ["lineItem/ResourceId", "lineItem/UnblendedCost"], [["b", "1"]])
    rejected = rejection(tmp_path, ["b.csv.gz"], SEPTEMBER)
    assert rejected.reason == (
        "b.csv.gz: required column(s) missing: lineItem/UsageStartDate, lineItem/ProductCode,"
        " lineItem/UsageType, lineItem/LineItemType"
    )


def test_cur2_without_resource_ids_is_rejected_with_cur2_advice(tmp_path: Path) -> None:
    header = [
        "line_item_line_item_type",
        "line_item_usage_start_date",
        "line_item_product_code",
        "line_item_usage_type",
        "line_item_unblended_cost",
    ]
    write_gzip_csv(
        tmp_path / "cur2.csv.gz",
        header,
        [["Usage", "2024-09-01T00:00:00Z", "AmazonS3", "Requests-Tier1", "1"]],
    )
    rejected = rejection(tmp_path, ["cur2.csv.gz"], SEPTEMBER, ExportFormat.CUR2)
    assert rejected.reason.startswith("cur2.csv.gz has no resource id column (line_item_resource_id)")
    assert "INCLUDE_RESOURCES" in rejected.reason


def test_a_delivery_without_rows_is_rejected(tmp_path: Path) -> None:
    header, _ = legacy_with_resource_ids()
    rejected = rejection_of_gzip_csv(tmp_path, header, [])
    assert "hold no rows" in rejected.reason


def test_a_broken_parquet_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "cur2-00001.parquet").write_bytes(b"PAR1 not really parquet")
    rejected = rejection(tmp_path, ["cur2-00001.parquet"], SEPTEMBER, ExportFormat.CUR2)
    assert rejected.reason.startswith("cur2-00001.parquet: not a readable Parquet file")


# ---------------------------------------------------------------- how files are handed over
def test_files_without_a_path_are_read_through_a_copy(tmp_path: Path) -> None:
    keys = write_legacy(tmp_path)
    contents = {key: (tmp_path / key).read_bytes() for key in keys}
    closed: list[str] = []

    class Stream(io.BytesIO):
        def __init__(self, key: str) -> None:
            super().__init__(contents[key])
            self.key = key

        def close(self) -> None:
            closed.append(self.key)
            super().close()

    parsed = read_delivery(make_delivery(SEPTEMBER, keys, ExportFormat.LEGACY_CUR), Stream)

    assert set(parsed.costs) == expected_usage()[0]
    assert closed == keys  # each file closed when read, in the manifest's order


def test_every_handle_is_read_to_its_end_and_closed(tmp_path: Path) -> None:
    """The caller's handle is read through once (download progress, local replays), then closed."""
    keys = write_legacy(tmp_path)
    handles: list[CountingFile] = []

    class CountingFile(io.FileIO):
        bytes_read = 0

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            self.bytes_read += len(data or b"")
            return data or b""

    def open_file(key: str) -> IO[bytes]:
        handle = CountingFile(tmp_path / key, "rb")
        handles.append(handle)
        return handle  # type: ignore[return-value]

    read_delivery(make_delivery(SEPTEMBER, keys, ExportFormat.LEGACY_CUR), open_file)

    assert [handle.closed for handle in handles] == [True, True]
    assert [handle.bytes_read for handle in handles] == [(tmp_path / key).stat().st_size for key in keys]


# ---------------------------------------------------------------- resources
def test_nothing_is_left_in_the_temp_directory(tmp_path: Path) -> None:
    """Each delivery gets a folder of its own (spills, FIFOs), removed when its costs have been read."""
    files = tmp_path / "files"
    files.mkdir()
    keys = write_legacy(files)
    base = tmp_path / "duckdb"
    settings = ReaderSettings(temp_directory=str(base))
    delivery = make_delivery(SEPTEMBER, keys, ExportFormat.LEGACY_CUR)

    parsed = read_delivery(delivery, opener(files), settings)
    (folder,) = base.iterdir()
    assert folder.name.startswith("delivery-")
    assert list(folder.glob("inflated-*")) == []  # each file's FIFO goes once the file is read
    assert len(list(parsed.costs)) == len(expected_usage()[0])
    assert list(base.iterdir()) == []
    (files / "no-header.csv.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DeliveryRejected, match="empty file"):
        read_delivery(
            make_delivery(SEPTEMBER, ["no-header.csv.gz"], ExportFormat.LEGACY_CUR), opener(files), settings
        )
    assert list(base.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_reader_that_fails_before_opening_the_pipe_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = write_legacy(tmp_path)
    monkeypatch.setattr(
        cost_export_reader,
        "_insert_file",
        lambda *_: "SELECT error('failed before reading') WHERE ? IS NOT NULL",
    )
    rejected = rejection(tmp_path, keys, SEPTEMBER)
    assert rejected.reason.startswith("legacy-00001.csv.gz: ")
    assert "failed before reading" in rejected.reason


def test_a_stream_dropped_unread_closes_its_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = write_legacy(tmp_path)
    closed: list[bool] = []
    original = cost_export_reader._Database.close

    def close(database: cost_export_reader._Database) -> None:
        closed.append(True)
        original(database)

    monkeypatch.setattr(cost_export_reader._Database, "close", close)
    parsed = read(tmp_path, keys, SEPTEMBER)
    assert closed == []
    del parsed
    gc.collect()
    assert closed == [True]


def test_the_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    """bench/cost_export.py --quick: generator, both engines, the exact-total check (timing not asserted)."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "cost_export.py"
    completed = subprocess.run(
        [sys.executable, str(bench), "--quick", "--json", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout)
    assert summary["file"]["rows"] == 20_000
    assert {run["engine"] for run in summary["runs"]} == {"ours", "duckdb"}
    assert all(run["check"] == "ok" for run in summary["runs"])


def test_folders_of_reads_that_died_are_removed(tmp_path: Path) -> None:
    keys = write_legacy(tmp_path)
    base = tmp_path / "duckdb"
    stale, recent = base / "delivery-stale", base / "delivery-recent"
    stale.mkdir(parents=True)
    recent.mkdir()
    (stale / "duckdb_temp_block").write_bytes(b"x")
    os.utime(stale, (time.time() - 7 * 3600, time.time() - 7 * 3600))

    parsed = read_delivery(
        make_delivery(SEPTEMBER, keys, ExportFormat.LEGACY_CUR),
        opener(tmp_path),
        ReaderSettings(temp_directory=str(base)),
    )
    list(parsed.costs)

    assert [folder.name for folder in base.iterdir()] == ["delivery-recent"]  # another read may be using it


# ---------------------------------------------------------------- one gzip file through several FIFOs
def write_many_rows(path: Path, *, line_ends_in_quotes: bool) -> None:
    """About 7 MB of CSV (several pieces for the FIFOs), quoted commas, and optionally quoted line ends."""
    header = [
        "identity/LineItemId",
        "lineItem/LineItemType",
        "lineItem/UsageStartDate",
        "lineItem/ProductCode",
        "lineItem/UsageType",
        "lineItem/ResourceId",
        "lineItem/UnblendedCost",
        "lineItem/LineItemDescription",
        "resourceTags/user:officex_purchase_id",
    ]
    usage_types = ["Requests-Tier1", "USW2-TimedStorage-ByteHrs", "USE1-CAN1-AWS-Out-Bytes", "EarlyDelete"]
    rows = []
    for number in range(50_000):
        description = "$0.004 per 10,000 GET, and all other requests"
        if line_ends_in_quotes and number % 9_973 == 5:
            description = "first line,\nsecond line"
        rows.append(
            [
                f"line-{number}",
                "Usage",
                f"2023-11-{1 + number % 30:02d}T{number % 24:02d}:00:00.000Z",
                "AmazonS3" if number % 10 else "AmazonEC2",
                usage_types[number % 4],
                f"officex-{number % 500:05d}-data",
                f"{number % 997}.{number:010d}" if number % 7 else f"1.{number % 89 + 1}E-8",
                description,
                f"P{number % 500:05d}" if number % 3 == 0 else "",
            ]
        )
    write_gzip_csv(path, header, rows, level=1)


@pytest.mark.parametrize("line_ends_in_quotes", [False, True])
def test_a_gzip_file_cut_into_fifos_reads_as_through_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line_ends_in_quotes: bool
) -> None:
    """Cut blind to quotes, proven by one row per line; a quoted line end sends it through one FIFO again."""
    write_many_rows(tmp_path / "big.csv.gz", line_ends_in_quotes=line_ends_in_quotes)
    delivery = make_delivery(NOVEMBER, ["big.csv.gz"], ExportFormat.LEGACY_CUR)
    fifos_per_read: list[int] = []
    insert = cost_export_reader._DeliveryReading._insert

    def counting_insert(self: object, *args: object) -> object:
        fifos_per_read.append(int(str(args[-1])))
        return insert(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(cost_export_reader._DeliveryReading, "_insert", counting_insert)

    def outcome(threads: int) -> tuple[int, int, set[BucketDayCost], list[UnattributedCost]]:
        parsed = read_delivery(delivery, opener(tmp_path), ReaderSettings(threads=threads))
        return parsed.rows_read, parsed.s3_rows, set(parsed.costs), parsed.unattributed

    through_one = outcome(1)
    assert fifos_per_read == [1]
    fifos_per_read.clear()

    assert outcome(2) == through_one
    assert through_one[0] == 50_000
    assert fifos_per_read == ([2, 1] if line_ends_in_quotes else [2])


def test_a_csv_error_in_a_file_cut_into_fifos_is_reported_with_its_line_in_the_file(
    tmp_path: Path, legacy_variant: tuple[list[str], list[list[str]]]
) -> None:
    header, rows = legacy_variant
    rows = rows * 40  # several pieces
    rows[30_000] = rows[30_000][:40]
    rejected = rejection_of_gzip_csv(tmp_path, header, rows, ReaderSettings(threads=2))
    assert "CSV Error on Line: 30002" in rejected.reason
