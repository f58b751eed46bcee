"""Fault injection, cost export: S3 failing mid-file, and Lambda delivering the same event again.

The real ``cost_export`` handler runs on moto S3 and real Postgres (the fixtures of
``test_cost_export_handler``). A wrapper around the S3 client hands out a data-file body
that breaks after half of its bytes, the way a reset connection or a read timeout does;
the reader is also given such a stream directly. In every case the invocation fails (so
Lambda retries the event), nothing is charged, nothing stays staged or on disk, and the
retried event applies the delivery exactly once — also when Lambda delivers it twice at once.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from botocore.exceptions import ReadTimeoutError, ResponseStreamingError

from billing.adapters.aws.s3_reports import ReportFilesReader, S3ReportObjects
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.cost_export_charging import OutcomeStatus
from billing.domain.errors import DependencyUnavailable
from billing.services.cost_export import CostExportBilling, load_delivery
from local.events import COST_REPORT_BUCKET, LEGACY_DATA_FILE_KEY, LEGACY_MANIFEST_KEY
from local.handlers import LocalLambdaContext, load_module
from tests.conftest import load_event
from tests.integration import test_cost_export_handler as handler_tests
from tests.integration.cost_export_support import ROWS, gzip_csv, legacy_manifest
from tests.integration.ledger_support import assert_ledger_invariants, run_concurrently
from tests.integration.test_cost_export_billing import s3_offer, s3_purchase

FUNCTION = handler_tests.FUNCTION
EVENT = "cost_export_legacy_manifest"
handler = handler_tests.handler  # the real handler, wired to the moto bucket (``s3``, conftest)


class BreakingBody:
    """An S3 body that gives the first half of the object, then fails with ``error``."""

    def __init__(self, body: Any, size: int, error: BaseException) -> None:
        self._body, self._left, self._error = body, size // 2, error

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise self._error
        wanted = self._left if size is None or size < 0 else min(size, self._left)
        self._left -= wanted
        data: bytes = self._body.read(wanted)
        return data

    def close(self) -> None:
        self._body.close()


class FlakyS3:
    """The moto client; the next data-file reads break halfway with the queued errors."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.breaks: list[BaseException] = []

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        response: dict[str, Any] = self._client.get_object(**kwargs)
        if kwargs["Key"] == LEGACY_DATA_FILE_KEY and self.breaks:
            response["Body"] = BreakingBody(response["Body"], response["ContentLength"], self.breaks.pop(0))
        return response


def _upload(db: psycopg.Connection[Any], s3: Any) -> Any:
    s3_offer(db)
    purchase_id = s3_purchase(db, "bucket-a")
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_DATA_FILE_KEY, Body=gzip_csv(ROWS))
    s3.put_object(Bucket=COST_REPORT_BUCKET, Key=LEGACY_MANIFEST_KEY, Body=legacy_manifest())
    return purchase_id


def _invoke(handler: Any) -> dict[str, Any]:
    result = handler(load_event(EVENT), LocalLambdaContext.for_function(FUNCTION))
    assert isinstance(result, dict)
    return result


def _nothing_charged(db: psycopg.Connection[Any], purchase_id: Any) -> None:
    assert db.execute("SELECT count(*) FROM ledger_entries WHERE source = 'cost-export'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM cost_export_charges").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM cost_export_staged_costs").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    assert_ledger_invariants(db, purchase_id)


def _applied_once(db: psycopg.Connection[Any], purchase_id: Any) -> None:
    charged = handler_tests._charged(db)
    assert len(charged) == 3, charged
    entries = db.execute("SELECT count(*) FROM ledger_entries WHERE source = 'cost-export'").fetchone()
    assert entries == (3,), "one posting per key, however often the event came"
    assert db.execute("SELECT status, reason FROM cost_export_deliveries").fetchall() == [("applied", None)]
    assert db.execute("SELECT count(*) FROM cost_export_staged_costs").fetchone() == (0,)
    balance, _ = assert_ledger_invariants(db, purchase_id)
    assert balance == 100 * 10**9 + sum(charged.values())  # the deposit, less the postings


@pytest.mark.parametrize(
    "error",
    [
        ResponseStreamingError(
            error="Connection broken: ConnectionResetError(104, 'Connection reset by peer')"
        ),
        ReadTimeoutError(endpoint_url="https://s3.amazonaws.com/cur"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["response-streaming-error", "read-timeout", "raw-oserror"],
)
def test_an_s3_read_error_mid_file_fails_the_invocation_and_the_retried_event_applies_once(
    db: psycopg.Connection[Any],
    s3: Any,
    handler: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    error: BaseException,
) -> None:
    purchase_id = _upload(db, s3)
    flaky = FlakyS3(s3)
    objects = S3ReportObjects(client=flaky, temp_dir=str(tmp_path))
    monkeypatch.setattr(load_module(FUNCTION), "report_objects", lambda: objects)
    flaky.breaks.append(error)

    with pytest.raises(Exception) as raised:
        _invoke(handler)

    assert not flaky.breaks, "the fault was injected"
    assert "interrupted" not in str(raised.value)
    _nothing_charged(db, purchase_id)
    status, reason = db.execute("SELECT status, reason FROM cost_export_deliveries").fetchone() or (
        None,
        None,
    )
    assert status == "processing" and str(reason).endswith("will be retried")
    assert list(tmp_path.iterdir()) == [], "the half-downloaded file is deleted"

    retried = _invoke(handler)  # Lambda's retry of the same event

    assert retried["manifests"][0]["status"] == "applied"
    _applied_once(db, purchase_id)
    assert _invoke(handler)["manifests"][0]["status"] == "already_applied"
    _applied_once(db, purchase_id)


class _BreakingStream(io.BytesIO):
    """A data file that is not on disk (a network stream), failing after half of its bytes."""

    def __init__(self, data: bytes, error: BaseException) -> None:
        super().__init__(data)
        self._half, self._error = len(data) // 2, error

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self._half:
            raise self._error
        wanted = self._half - self.tell() if size is None or size < 0 else min(size, self._half - self.tell())
        return super().read(wanted)


class _BreakingFile(io.FileIO):
    """A data file on disk whose read fails halfway (an I/O error of the disk)."""

    error: BaseException = OSError(5, "Input/output error")

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= Path(str(self.name)).stat().st_size // 2:
            raise self.error
        return super().read(min(size, 64) if size and size > 0 else 64) or b""


@pytest.mark.parametrize("where", ["stream", "file"])
def test_the_reader_treats_a_handle_failing_mid_file_as_an_outage_not_as_bad_data(
    db: psycopg.Connection[Any], s3: Any, tmp_path: Path, where: str
) -> None:
    """``read_delivery`` given a breaking handle: the delivery stays to be retried, never ``failed``."""
    purchase_id = _upload(db, s3)
    data = gzip_csv(ROWS)
    delivery = load_delivery(S3ReportObjects(client=s3), COST_REPORT_BUCKET, LEGACY_MANIFEST_KEY)
    on_disk = tmp_path / "data.csv.gz"
    on_disk.write_bytes(data)
    breaking: Callable[[str], IO[bytes]] = (
        (lambda key: _BreakingStream(data, ConnectionResetError(104, "Connection reset by peer")))
        if where == "stream"
        else (lambda key: _BreakingFile(on_disk, "rb"))
    )
    billing = CostExportBilling(PostgresTransactions(lambda: db), ReportFilesReader(lambda _: breaking))

    with pytest.raises(DependencyUnavailable, match="reading the file failed") as raised:
        billing.process(delivery)

    assert isinstance(raised.value.__cause__, OSError)

    _nothing_charged(db, purchase_id)
    assert db.execute("SELECT status, reason FROM cost_export_deliveries").fetchone() == (
        "processing",
        "interrupted (DependencyUnavailable); will be retried",
    )

    healthy = CostExportBilling(
        PostgresTransactions(lambda: db), ReportFilesReader(lambda _: lambda key: io.BytesIO(data))
    )
    assert healthy.process(delivery).status is OutcomeStatus.APPLIED
    _applied_once(db, purchase_id)


def test_the_same_s3_event_delivered_twice_at_once_is_charged_once(
    db: psycopg.Connection[Any], database_url: str, s3: Any, handler: Any
) -> None:
    """Two Lambda invocations of one record (at-least-once delivery), each on its own connection."""
    purchase_id = _upload(db, s3)

    results = run_concurrently(database_url, 2, lambda _connection, _index: _invoke(handler))

    statuses = sorted(result["manifests"][0]["status"] for result in results)
    assert statuses == ["already_applied", "applied"]
    _applied_once(db, purchase_id)
