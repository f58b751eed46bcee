"""Manifests of cost-export deliveries: which keys start a delivery and what the delivery is."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from billing.domain.cost_export import DeliveryRejected, ExportFormat
from billing.domain.cost_export_manifests import (
    data_file_kind,
    decode_s3_event_key,
    is_manifest_key,
    parse_manifest,
)

BUCKET = "vendor-billing-cur-1234"
WRITTEN = datetime(2023, 11, 5, 7, 31, 12, tzinfo=UTC)
ASSEMBLY = "0b7e4d5c-8f2a-4c1e-9d3b-2a1f6e5d4c3b"
LEGACY_KEY = f"cur/officex-s3/20231101-20231201/{ASSEMBLY}/officex-s3-Manifest.json"
LEGACY_LATEST_KEY = "cur/officex-s3/20231101-20231201/officex-s3-Manifest.json"
CUR2_KEY = "exports/officex-cur2/metadata/BILLING_PERIOD=2024-09/officex-cur2-Manifest.json"
FOCUS_KEY = "exports/officex-focus/metadata/BILLING_PERIOD=2024-09/officex-focus-Manifest.json"


def legacy_manifest(**changes: Any) -> dict[str, Any]:
    """Shaped like a legacy CUR manifest (assemblyId, billingPeriod in compact ISO, reportKeys)."""
    manifest: dict[str, Any] = {
        "assemblyId": ASSEMBLY,
        "account": "123412340534",
        "columns": [
            {"category": "identity", "name": "LineItemId", "type": "String"},
            {"category": "lineItem", "name": "ResourceId", "type": "String"},
            {"category": "lineItem", "name": "UnblendedCost", "type": "BigDecimal"},
        ],
        "charset": "UTF-8",
        "compression": "GZIP",
        "contentType": "text/csv",
        "reportId": "5b2e0f3a",
        "reportName": "officex-s3",
        "billingPeriod": {"start": "20231101T000000.000Z", "end": "20231201T000000.000Z"},
        "bucket": BUCKET,
        "reportKeys": [
            f"cur/officex-s3/20231101-20231201/{ASSEMBLY}/officex-s3-00001.csv.gz",
            f"cur/officex-s3/20231101-20231201/{ASSEMBLY}/officex-s3-00002.csv.gz",
        ],
        "additionalArtifactKeys": [],
    }
    manifest.update(changes)
    return manifest


def data_exports_manifest(export: str = "officex-cur2", **changes: Any) -> dict[str, Any]:
    """Shaped like a Data Exports manifest (executionId, exportArn, dataFiles as s3:// URIs)."""
    manifest: dict[str, Any] = {
        "executionId": "f3c1d2e4-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
        "exportArn": f"arn:aws:bcm-data-exports:us-east-1:123412340534:export/{export}-1a2b3c",
        "exportName": export,
        "billingPeriod": {"start": "2024-09-01T00:00:00.000Z", "end": "2024-10-01T00:00:00.000Z"},
        "columns": [
            {"name": "line_item_resource_id", "type": "string"},
            {"name": "line_item_unblended_cost", "type": "double"},
            {"name": "resource_tags", "type": "map<string,string>"},
        ],
        "dataFiles": [
            f"s3://{BUCKET}/exports/{export}/data/BILLING_PERIOD=2024-09/{export}-00001.csv.gz",
            f"s3://{BUCKET}/exports/{export}/data/BILLING_PERIOD=2024-09/{export}-00002.csv.gz",
        ],
    }
    manifest.update(changes)
    return manifest


def body(manifest: object) -> bytes:
    return json.dumps(manifest).encode()


# ------------------------------------------------------------------ keys
@pytest.mark.parametrize(
    "key",
    [
        LEGACY_KEY,
        LEGACY_LATEST_KEY,
        "officex-s3/20231101-20231201/officex-s3-Manifest.json",  # no report prefix
        CUR2_KEY,
        FOCUS_KEY,
        "officex-cur2/metadata/BILLING_PERIOD=2024-09/officex-cur2-Manifest.json",  # no export prefix
        "exports/officex-cur2/metadata/BILLING_PERIOD=2024-09/20240905T0712/officex-cur2-Manifest.json",
    ],
)
def test_manifest_keys_are_recognised(key: str) -> None:
    assert is_manifest_key(key)


@pytest.mark.parametrize(
    "key",
    [
        f"cur/officex-s3/20231101-20231201/{ASSEMBLY}/officex-s3-00001.csv.gz",  # a data file
        "exports/officex-cur2/data/BILLING_PERIOD=2024-09/officex-cur2-00001.parquet",
        "cur/officex-s3/20231101-20231201/officex-s3-RedshiftManifest.json",  # matches the S3 suffix filter
        "cur/officex-s3/20231101-20231201/officex-s3-RedshiftCommands.sql",
        "cur/officex-s3/20231101-20231201/-Manifest.json",  # no report name
        "notes/some-Manifest.json",  # not in a delivery folder
        "exports/officex-cur2/data/BILLING_PERIOD=2024-09/officex-cur2-Manifest.json",  # under data/
        "exports/officex-cur2/metadata/officex-cur2-Manifest.json",  # no partition
        "cur/officex-s3/2023-11/officex-s3-Manifest.json",
        "aws-programmatic-access-test-object",
        "",
    ],
)
def test_other_objects_are_ignored(key: str) -> None:
    assert not is_manifest_key(key)


def test_event_keys_are_url_decoded() -> None:
    raw = "cur/office+x%20s3/20231101-20231201/office+x%20s3-Manifest.json"
    key = decode_s3_event_key(raw)
    assert key == "cur/office x s3/20231101-20231201/office x s3-Manifest.json"
    assert is_manifest_key(key)
    encoded = "exports/cur2/metadata/BILLING_PERIOD%3D2024-09/cur2-Manifest.json"
    assert decode_s3_event_key(encoded) == "exports/cur2/metadata/BILLING_PERIOD=2024-09/cur2-Manifest.json"
    assert is_manifest_key(decode_s3_event_key(encoded))
    assert not is_manifest_key(encoded)  # undecoded, the partition folder is not recognisable


# ------------------------------------------------------------------ legacy CUR
@pytest.mark.parametrize("key", [LEGACY_KEY, LEGACY_LATEST_KEY])
def test_legacy_manifest_gives_its_delivery(key: str) -> None:
    delivery = parse_manifest(BUCKET, key, body(legacy_manifest()), WRITTEN)
    assert delivery.format is ExportFormat.LEGACY_CUR
    assert delivery.report_name == "officex-s3"
    assert delivery.billing_period == date(2023, 11, 1)
    assert delivery.delivery_id == ASSEMBLY  # both copies of the manifest name the same delivery
    assert delivery.delivered_at == WRITTEN
    assert delivery.bucket == BUCKET
    assert delivery.manifest_key == key
    assert delivery.data_keys == tuple(legacy_manifest()["reportKeys"])


def test_delivered_at_is_kept_in_utc() -> None:
    written = datetime(2023, 11, 5, 9, 31, 12, tzinfo=timezone(timedelta(hours=2)))
    delivery = parse_manifest(BUCKET, LEGACY_KEY, body(legacy_manifest()), written)
    assert delivery.delivered_at == WRITTEN
    assert delivery.delivered_at.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_manifest(BUCKET, LEGACY_KEY, body(legacy_manifest()), written.replace(tzinfo=None))


def test_legacy_report_name_falls_back_to_the_key() -> None:
    manifest = legacy_manifest()
    del manifest["reportName"]
    assert parse_manifest(BUCKET, LEGACY_KEY, body(manifest), WRITTEN).report_name == "officex-s3"


def test_legacy_manifest_order_of_files_is_kept() -> None:
    keys = [f"cur/officex-s3/20231101-20231201/{ASSEMBLY}/officex-s3-0000{n}.csv.gz" for n in (3, 1, 2)]
    delivery = parse_manifest(BUCKET, LEGACY_KEY, body(legacy_manifest(reportKeys=keys)), WRITTEN)
    assert delivery.data_keys == tuple(keys)


# ------------------------------------------------------------------ Data Exports
def test_cur2_manifest_gives_its_delivery() -> None:
    delivery = parse_manifest(BUCKET, CUR2_KEY, body(data_exports_manifest()), WRITTEN)
    assert delivery.format is ExportFormat.CUR2
    assert delivery.report_name == "officex-cur2"
    assert delivery.billing_period == date(2024, 9, 1)
    assert delivery.delivery_id == "f3c1d2e4-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    assert delivery.data_keys == (
        "exports/officex-cur2/data/BILLING_PERIOD=2024-09/officex-cur2-00001.csv.gz",
        "exports/officex-cur2/data/BILLING_PERIOD=2024-09/officex-cur2-00002.csv.gz",
    )


def test_focus_manifest_is_told_by_its_columns() -> None:
    columns = [
        {"name": name, "type": "string"} for name in ("BilledCost", "ChargePeriodStart", "ChargeCategory")
    ]
    manifest = data_exports_manifest("officex-focus", columns=columns)
    delivery = parse_manifest(BUCKET, FOCUS_KEY, body(manifest), WRITTEN)
    assert delivery.format is ExportFormat.FOCUS
    assert delivery.report_name == "officex-focus"


def test_data_exports_manifest_accepts_plain_keys_and_parquet() -> None:
    files = ["exports/officex-cur2/data/BILLING_PERIOD=2024-09/officex-cur2-00001.snappy.parquet"]
    manifest = data_exports_manifest(dataFiles=None, reportKeys=files)
    del manifest["dataFiles"]
    del manifest["billingPeriod"]
    del manifest["exportName"]
    delivery = parse_manifest(BUCKET, CUR2_KEY, body(manifest), WRITTEN)
    assert delivery.data_keys == tuple(files)
    assert delivery.report_name == "officex-cur2"  # from the key
    assert delivery.billing_period == date(2024, 9, 1)  # from the partition
    assert data_file_kind(files[0]) == "parquet"


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("a/b-00001.csv.gz", "csv.gz"),
        ("a/b-00001.CSV.GZ", "csv.gz"),
        ("a/b.csv", "csv"),
        ("a/b.parquet", "parquet"),
    ],
)
def test_data_file_kinds(key: str, kind: str) -> None:
    assert data_file_kind(key) == kind


# ------------------------------------------------------------------ rejected
@pytest.mark.parametrize(
    ("key", "content", "reason"),
    [
        (LEGACY_KEY, b"{not json", "not valid JSON"),
        (LEGACY_KEY, b"\xff\xfe", "not valid JSON"),
        (LEGACY_KEY, body(["a", "b"]), "not a JSON object"),
        (LEGACY_KEY, body(legacy_manifest(assemblyId="")), "no assemblyId"),
        (LEGACY_KEY, body(legacy_manifest(assemblyId=None)), "no assemblyId"),
        (LEGACY_KEY, body(legacy_manifest(reportKeys=[])), "lists no data files"),
        (LEGACY_KEY, body(legacy_manifest(reportKeys="a.csv.gz")), "not a list"),
        (LEGACY_KEY, body(legacy_manifest(reportKeys=[""])), "not an object key"),
        (LEGACY_KEY, body(legacy_manifest(reportKeys=[3])), "not an object key"),
        (LEGACY_KEY, body(legacy_manifest(reportKeys=["a/r-1.csv.gz", "a/r-1.csv.gz"])), "listed twice"),
        (LEGACY_KEY, body(legacy_manifest(reportKeys=["a/r-1.csv.zip"])), "ZIP-compressed"),
        (LEGACY_KEY, body(legacy_manifest(reportKeys=["a/r-1.json"])), "neither gzip CSV"),
        (LEGACY_KEY, body(legacy_manifest(bucket="someone-elses-bucket")), "bucket someone-elses-bucket"),
        (
            LEGACY_KEY,
            body(legacy_manifest(billingPeriod={"start": "20231001T000000.000Z"})),
            "disagrees with the period in the key",
        ),
        (LEGACY_KEY, body(legacy_manifest(billingPeriod={"start": "soon"})), "not a date"),
        (
            "cur/officex-s3/20231102-20231201/officex-s3-Manifest.json",
            body(legacy_manifest(billingPeriod={})),
            "not on the first of a month",
        ),
        (
            "cur/officex-s3/20231399-20240101/officex-s3-Manifest.json",
            body(legacy_manifest()),
            "not a date",
        ),
        (LEGACY_KEY, body({"executionId": "x", "dataFiles": ["a.csv.gz"]}), "Data Exports manifest"),
        (CUR2_KEY, body(data_exports_manifest(executionId=" ")), "no executionId"),
        (CUR2_KEY, body(legacy_manifest(billingPeriod={"start": "20240901T000000.000Z"})), "no executionId"),
        (CUR2_KEY, body({**data_exports_manifest(), "dataFiles": None}), "not a list"),
        (
            CUR2_KEY,
            body(data_exports_manifest(dataFiles=["s3://other-bucket/exports/x.csv.gz"])),
            "in bucket other-bucket",
        ),
        (CUR2_KEY, body(data_exports_manifest(dataFiles=["s3://bucket-only"])), "not an s3://bucket/key URI"),
        (
            CUR2_KEY,
            body(data_exports_manifest(billingPeriod={"start": "2024-08-01T00:00:00.000Z"})),
            "disagrees with the period in the key",
        ),
        (f"{LEGACY_KEY}.bak", body(legacy_manifest()), "not a cost-export manifest key"),
    ],
)
def test_unusable_manifests_are_rejected(key: str, content: bytes, reason: str) -> None:
    with pytest.raises(DeliveryRejected) as rejected:
        parse_manifest(BUCKET, key, content, WRITTEN)
    assert reason in rejected.value.reason
    assert rejected.value.reason.startswith(f"manifest {key}:")


def test_a_data_exports_manifest_without_data_files_is_rejected() -> None:
    manifest = data_exports_manifest()
    del manifest["dataFiles"]
    with pytest.raises(DeliveryRejected, match="no dataFiles or reportKeys"):
        parse_manifest(BUCKET, CUR2_KEY, body(manifest), WRITTEN)
