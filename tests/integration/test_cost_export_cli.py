"""``vendorctl cost-export``: replay from a local file or S3, dry runs, the delivery list."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import psycopg
import pytest

from local.events import COST_REPORT_BUCKET, LEGACY_DATA_FILE_KEY, LEGACY_MANIFEST_KEY
from tests.integration.cost_export_support import ROWS, gzip_csv, legacy_manifest
from tests.integration.test_cost_export_billing import s3_offer, s3_purchase
from vendorctl.cli import main
from vendorctl.cost_export import ProgressBar


def _vendorctl(database_url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--database-url", database_url, "cost-export", *argv], out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def manifest_file(tmp_path: Path) -> Path:
    """The delivery as ``aws s3 sync`` leaves it: the manifest and its data file side by side."""
    manifest = tmp_path / LEGACY_MANIFEST_KEY
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(legacy_manifest())
    (tmp_path / LEGACY_DATA_FILE_KEY).write_bytes(gzip_csv(ROWS))
    return manifest


def test_dry_run_prints_the_charges_and_writes_nothing_then_replay_applies_once(
    database_url: str, db: psycopg.Connection[Any], manifest_file: Path
) -> None:
    s3_offer(db)
    purchase_id = s3_purchase(db, "bucket-a")

    code, out, err = _vendorctl(database_url, "replay", "--manifest-file", str(manifest_file), "--dry-run")

    assert code == 0, err
    assert "dry run: nothing written" in out
    # 0.0123456789, 0.000005 and 0.15 − 0.05 (a credit), each × 1.25 and rounded once
    assert f"purchase {purchase_id}  charge      0.140438349" in out
    assert "not_s3                   AmazonEC2                                  0.25  (1 rows)" in out
    assert "reading data files [" in err and "100%" in err
    assert db.execute("SELECT count(*) FROM cost_export_deliveries").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM ledger_entries WHERE source = 'cost-export'").fetchone() == (0,)

    code, out, _ = _vendorctl(database_url, "replay", "--manifest-file", str(manifest_file), "--no-progress")

    assert code == 0
    assert "status: applied" in out
    assert db.execute("SELECT count(*) FROM ledger_entries WHERE source = 'cost-export'").fetchone() == (3,)

    code, out, _ = _vendorctl(database_url, "replay", "--manifest-file", str(manifest_file), "--no-progress")

    assert code == 0
    assert "already applied: nothing changed" in out
    assert db.execute("SELECT count(*) FROM ledger_entries WHERE source = 'cost-export'").fetchone() == (3,)

    code, out, _ = _vendorctl(database_url, "deliveries")

    assert code == 0
    assert "officex-cur 2023-11 7f0c1a7e-0000-4000-8000-000000000000  applied" in out


def test_a_broken_data_file_fails_with_its_reason(
    database_url: str, db: psycopg.Connection[Any], manifest_file: Path, tmp_path: Path
) -> None:
    s3_offer(db)
    (tmp_path / LEGACY_DATA_FILE_KEY).write_bytes(b"this is not gzip")

    code, out, _ = _vendorctl(database_url, "replay", "--manifest-file", str(manifest_file), "--no-progress")

    assert code == 2
    assert "failed: nothing charged" in out and "reason:" in out
    code, out, _ = _vendorctl(database_url, "deliveries")
    assert "failed" in out and "reason:" in out


def test_replay_from_s3(database_url: str, db: psycopg.Connection[Any], s3: Any) -> None:
    s3_offer(db)
    s3_purchase(db, "bucket-a")
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_DATA_FILE_KEY, Body=gzip_csv(ROWS))
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_MANIFEST_KEY, Body=legacy_manifest())

    code, out, err = _vendorctl(
        database_url, "replay", "--manifest", f"s3://{COST_REPORT_BUCKET}/{LEGACY_MANIFEST_KEY}"
    )

    assert code == 0, err
    assert "status: applied" in out
    assert "reading data files" in err


def test_wrong_input_is_refused(database_url: str, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    code, _, err = _vendorctl(database_url, "replay", "--manifest", "https://example.com/x")
    assert code == 2 and "s3://bucket/key" in err

    not_a_manifest = tmp_path / "notes.json"
    not_a_manifest.write_text("{}")
    code, _, err = _vendorctl(database_url, "replay", "--manifest-file", str(not_a_manifest))
    assert code == 2 and "manifest cannot be used" in err


def test_progress_bar_draws_a_bar_with_a_total_and_a_counter_without() -> None:
    stream = io.StringIO()
    bar = ProgressBar("reading", stream, total=4 * 1024 * 1024, min_interval_s=0)

    bar(1024 * 1024)
    bar(1024 * 1024)

    assert bar.line() == "reading [############------------]  50% 2.0 MiB/4.0 MiB"
    keys = ProgressBar("staging", stream, unit="keys", min_interval_s=0)
    keys(12_345)
    assert keys.line() == "staging 12,345 keys"
    bar.close()
    assert stream.getvalue().endswith("\n")
    silent = io.StringIO()
    off = ProgressBar("x", silent, enabled=False)
    off(10)
    off.close()
    assert silent.getvalue() == ""
