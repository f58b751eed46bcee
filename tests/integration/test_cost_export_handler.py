"""The cost_export Lambda through its events/ fixtures, on moto S3 and real Postgres.

The manifest and its data file are uploaded to a moto bucket; the handler decodes the
event key, reads the manifest from S3, streams the data file to /tmp through the S3
adapter, reads it with the DuckDB reader and bills it: the production wiring end to end,
with only the S3 client pointed at moto.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from billing.adapters.aws.s3_reports import ReportsNotConfigured, S3ReportObjects
from billing.domain.cost_export_charging import vendor_price_nano
from local.events import (
    COST_REPORT_BUCKET,
    DATA_EXPORTS_MANIFEST_KEY,
    LEGACY_DATA_FILE_KEY,
    LEGACY_MANIFEST_KEY,
)
from local.handlers import LocalLambdaContext, load_handler, load_module
from local.template import load_template
from tests.conftest import load_event
from tests.integration.cost_export_support import ASSEMBLY, ROWS, gzip_csv, legacy_manifest
from tests.integration.test_cost_export_billing import MARKUP, s3_offer, s3_purchase

FUNCTION = load_template().function_by_folder("cost_export")


@pytest.fixture
def handler(s3: Any, handler_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real handler and its own wiring, with its S3 client inside moto."""
    module = load_module(FUNCTION)
    objects = S3ReportObjects(client=s3)
    monkeypatch.setattr(module, "report_objects", lambda: objects)
    module.cost_export_billing.cache_clear()
    yield load_handler(FUNCTION)
    module.cost_export_billing.cache_clear()


def _invoke(handler: Any, fixture: str) -> dict[str, Any]:
    result = handler(load_event(fixture), LocalLambdaContext.for_function(FUNCTION))
    assert isinstance(result, dict)
    return result


def _charged(db: psycopg.Connection[Any]) -> dict[tuple[str, str, str], int]:
    rows = db.execute(
        """SELECT metadata->>'bucket', metadata->>'usage_day', metadata->>'charge_kind',
                  sum(amount_nano)::bigint
             FROM ledger_entries WHERE source = 'cost-export' GROUP BY 1, 2, 3"""
    ).fetchall()
    return {(row[0], row[1], row[2]): row[3] for row in rows}


def test_a_legacy_manifest_event_bills_its_delivery_once(
    db: psycopg.Connection[Any], s3: Any, handler: Any
) -> None:
    s3_offer(db)
    s3_purchase(db, "bucket-a")
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_DATA_FILE_KEY, Body=gzip_csv(ROWS))
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_MANIFEST_KEY, Body=legacy_manifest())

    first = _invoke(handler, "cost_export_legacy_manifest")

    (outcome,) = first["manifests"]
    assert outcome["status"] == "applied"
    assert outcome["delivery_id"] == ASSEMBLY
    assert outcome["billing_period"] == "2023-11-01"
    assert _charged(db) == {
        ("bucket-a", "2023-11-01", "storage"): -vendor_price_nano(Decimal("0.0123456789"), MARKUP),
        ("bucket-a", "2023-11-01", "requests"): -vendor_price_nano(Decimal("0.000005"), MARKUP),
        ("bucket-a", "2023-11-02", "data_transfer"): -vendor_price_nano(Decimal("0.10"), MARKUP),
    }
    ledger_before = db.execute("SELECT count(*), sum(amount_nano) FROM ledger_entries").fetchone()

    again = _invoke(handler, "cost_export_legacy_manifest")  # a duplicate S3 event

    assert again["manifests"][0]["status"] == "already_applied"
    assert db.execute("SELECT count(*), sum(amount_nano) FROM ledger_entries").fetchone() == ledger_before
    assert db.execute("SELECT status, rows_read, s3_rows FROM cost_export_deliveries").fetchall() == [
        ("applied", 5, 4)
    ]


def test_a_truncated_gzip_fails_the_delivery_and_a_later_good_one_applies(
    db: psycopg.Connection[Any], s3: Any, handler: Any
) -> None:
    s3_offer(db)
    s3_purchase(db, "bucket-a")
    good = gzip_csv(ROWS)
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_DATA_FILE_KEY, Body=good[: len(good) // 2])
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_MANIFEST_KEY, Body=legacy_manifest())

    failed = _invoke(handler, "cost_export_legacy_manifest")

    assert failed["manifests"][0]["status"] == "failed"
    assert "gzip" in failed["manifests"][0]["reason"]
    assert _charged(db) == {}
    status, reason = db.execute("SELECT status, reason FROM cost_export_deliveries").fetchone() or (
        None,
        None,
    )
    assert status == "failed" and "gzip" in str(reason)

    later_assembly = "7f0c1a7e-0000-4000-8000-000000000001"
    later_data_key = LEGACY_DATA_FILE_KEY.replace(ASSEMBLY, later_assembly)
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=later_data_key, Body=good)
    s3.put_object(
        Bucket=COST_REPORT_BUCKET,
        Key=LEGACY_MANIFEST_KEY.replace(ASSEMBLY, later_assembly),
        Body=legacy_manifest(later_assembly, later_data_key),
    )
    event = load_event("cost_export_legacy_manifest")
    event["Records"][0]["s3"]["object"]["key"] = event["Records"][0]["s3"]["object"]["key"].replace(
        ASSEMBLY, later_assembly
    )

    later = handler(event, LocalLambdaContext.for_function(FUNCTION))

    assert later["manifests"][0]["status"] == "applied"
    assert len(_charged(db)) == 3


def test_a_data_exports_manifest_key_arrives_url_encoded_and_is_decoded(
    db: psycopg.Connection[Any], s3: Any, handler: Any
) -> None:
    s3_offer(db)
    s3_purchase(db, "bucket-a")
    data_key = "exports/officex-cur2/data/BILLING_PERIOD=2023-11/officex-cur2-00001.csv.gz"
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=data_key, Body=gzip_csv(ROWS[:1]))
    manifest = {
        "executionId": "exec-0001",
        "exportName": "officex-cur2",
        "billingPeriod": {"start": "2023-11-01T00:00:00Z"},
        "dataFiles": [f"s3://{COST_REPORT_BUCKET}/{data_key}"],
        "columns": [{"name": "line_item_unblended_cost", "type": "double"}],
    }
    s3.put_object(
        Bucket=COST_REPORT_BUCKET, Key=DATA_EXPORTS_MANIFEST_KEY, Body=json.dumps(manifest).encode()
    )
    assert "%3D" in load_event("cost_export_data_exports_manifest")["Records"][0]["s3"]["object"]["key"]

    result = _invoke(handler, "cost_export_data_exports_manifest")

    assert result["manifests"][0]["status"] == "applied"
    assert result["manifests"][0]["delivery_id"] == "exec-0001"
    assert _charged(db) == {
        ("bucket-a", "2023-11-01", "storage"): -vendor_price_nano(Decimal("0.0123456789"), MARKUP)
    }


@pytest.mark.parametrize(
    "fixture", ["cost_export_data_file_ignored", "cost_export_redshift_manifest_ignored"]
)
def test_objects_that_are_not_manifests_are_ignored(
    db: psycopg.Connection[Any], s3: Any, handler: Any, fixture: str
) -> None:
    result = _invoke(handler, fixture)

    assert [outcome["status"] for outcome in result["manifests"]] == ["ignored"]
    assert db.execute("SELECT count(*) FROM cost_export_deliveries").fetchone() == (0,)


def test_a_manifest_that_vanished_is_reported_not_retried(
    db: psycopg.Connection[Any], s3: Any, handler: Any
) -> None:
    result = _invoke(handler, "cost_export_legacy_manifest")  # nothing uploaded

    assert result["manifests"][0]["status"] == "failed"
    assert "does not exist" in result["manifests"][0]["reason"]


def test_a_missing_data_file_fails_the_delivery(db: psycopg.Connection[Any], s3: Any, handler: Any) -> None:
    s3_offer(db)
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_MANIFEST_KEY, Body=legacy_manifest())

    result = _invoke(handler, "cost_export_legacy_manifest")

    assert result["manifests"][0]["status"] == "failed"
    assert db.execute("SELECT status FROM cost_export_deliveries").fetchone() == ("failed",)


def test_the_s3_adapter_streams_to_a_temp_file_and_deletes_it(s3: Any, tmp_path: Any) -> None:
    body = bytes(range(256)) * 20_000  # ~5 MiB: several chunks
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key="x/report-1.csv.gz", Body=body)
    seen: list[int] = []
    objects = S3ReportObjects(client=s3, temp_dir=str(tmp_path), progress=seen.append)

    with objects.open_data_file(COST_REPORT_BUCKET, "x/report-1.csv.gz") as handle:
        assert handle.name.endswith(".csv.gz")
        assert handle.read() == body
        assert len(list(tmp_path.iterdir())) == 1

    assert list(tmp_path.iterdir()) == []
    assert sum(seen) == len(body) and len(seen) > 1


def test_without_credentials_the_bucket_is_reported_unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    with pytest.raises(ReportsNotConfigured):
        S3ReportObjects().manifest(COST_REPORT_BUCKET, LEGACY_MANIFEST_KEY)
