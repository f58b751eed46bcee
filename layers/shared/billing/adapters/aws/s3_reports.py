"""The cost report bucket: manifests, and the data files they list, streamed to local temp files.

Every call has explicit botocore timeouts and a bounded number of attempts. Data files
are streamed to ``/tmp`` in 1 MiB chunks (constant memory whatever their size) and
deleted when closed. What a failure means is decided here, once:

- the object is missing → ``DeliveryRejected`` (a manifest lists exactly what it has;
  a missing file will not come back by retrying);
- no credentials or access denied → ``ReportsNotConfigured`` (an operator must act; the
  function alerts instead of retrying);
- anything else (network, throttling, 5xx, a cut transfer) → ``DependencyUnavailable``
  (the event is retried).

``LocalReportFiles`` serves the same calls from a folder, for operator replays.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from billing.adapters.aws.clients import boto3_client, error_code
from billing.domain.cost_export import Delivery, DeliveryRejected, ParsedDelivery
from billing.domain.cost_export_charging import ManifestObject
from billing.domain.errors import DependencyUnavailable

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_CHUNK_BYTES = 1024 * 1024
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}

Progress = Callable[[int], None]
OpenFile = Callable[[str], IO[bytes]]


class ReportsNotConfigured(Exception):
    """The report bucket cannot be read with this function's credentials or permissions."""


class S3Client(Protocol):
    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...


def _suffix(key: str) -> str:
    """``.csv.gz`` for ``…/report-1.csv.gz``: readers may infer the format from the name."""
    name = PurePosixPath(key).name
    return name[name.index(".") :] if "." in name else ""


def _copy(source: Any, target: IO[bytes], progress: Progress | None) -> int:
    written = 0
    while chunk := source.read(_CHUNK_BYTES):
        target.write(chunk)
        written += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return written


class S3ReportObjects:
    """Reads manifests and data files from S3 (the report bucket)."""

    def __init__(
        self,
        *,
        client: S3Client | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 5,
        temp_dir: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._client = client
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_attempts = max_attempts
        self._temp_dir = temp_dir
        self._progress = progress
        self._lock = threading.Lock()

    def manifest(self, bucket: str, key: str) -> ManifestObject:
        response = self._get(bucket, key)
        body = response["Body"]
        try:
            content = self._guarded(lambda: body.read(MAX_MANIFEST_BYTES + 1), bucket, key)
        finally:
            body.close()
        if len(content) > MAX_MANIFEST_BYTES:
            raise DeliveryRejected(f"s3://{bucket}/{key} is larger than a manifest can be")
        last_modified = response.get("LastModified")
        if not isinstance(last_modified, datetime):
            last_modified = datetime.now(UTC)
        return ManifestObject(body=content, last_modified=last_modified)

    def open_data_file(self, bucket: str, key: str) -> IO[bytes]:
        """The object downloaded to a temp file (deleted on close), positioned at its start."""
        response = self._get(bucket, key)
        expected = response.get("ContentLength")
        body = response["Body"]
        target = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the caller closes it (and so deletes it)
            prefix="cost-export-", suffix=_suffix(key), dir=self._temp_dir
        )
        try:
            written = self._guarded(lambda: _copy(body, target, self._progress), bucket, key)
            if isinstance(expected, int) and written != expected:
                raise DependencyUnavailable(
                    f"s3://{bucket}/{key}: transfer cut short ({written} of {expected} bytes)"
                )
            target.flush()
            target.seek(0)
            return target
        except BaseException:
            target.close()
            raise
        finally:
            body.close()

    def opener(self, bucket: str) -> OpenFile:
        """``open_file(key)`` for the reader: data files of one delivery live in its manifest's bucket."""
        return lambda key: self.open_data_file(bucket, key)

    # ------------------------------------------------------------------ internals
    def _get(self, bucket: str, key: str) -> dict[str, Any]:
        response: dict[str, Any] = self._guarded(
            lambda: self._s3().get_object(Bucket=bucket, Key=key), bucket, key
        )
        return response

    def _guarded(self, call: Callable[[], Any], bucket: str, key: str) -> Any:
        from botocore.exceptions import (  # noqa: PLC0415 - boto3 loads only when used
            BotoCoreError,
            ClientError,
            NoCredentialsError,
        )

        where = f"s3://{bucket}/{key}"
        try:
            return call()
        except ClientError as exc:
            code = error_code(exc)
            if code in _MISSING_CODES:
                raise DeliveryRejected(f"{where} does not exist") from None
            if code in _DENIED_CODES:
                raise ReportsNotConfigured(f"{where}: access denied ({code})") from None
            raise DependencyUnavailable(f"{where}: S3 answered {code or 'an error'}") from None
        except NoCredentialsError:
            raise ReportsNotConfigured("no AWS credentials to read the report bucket") from None
        except BotoCoreError as exc:
            raise DependencyUnavailable(f"{where}: S3 is unreachable ({type(exc).__name__})") from None

    def _s3(self) -> S3Client:
        with self._lock:  # boto3 sessions are not thread-safe
            if self._client is None:
                self._client = boto3_client(
                    "s3",
                    connect_timeout_s=self._connect_timeout_s,
                    read_timeout_s=self._read_timeout_s,
                    attempts=self._max_attempts,
                )
            return self._client


class LocalReportFiles:
    """Manifests and data files from a local folder (operator replays; tests).

    A data key resolves to ``data_dir/<key>`` (a synced copy of the bucket), else to
    ``data_dir/<file name>`` (the files downloaded side by side).
    """

    def __init__(self, data_dir: Path, *, progress: Progress | None = None) -> None:
        self._data_dir = data_dir
        self._progress = progress

    def manifest_file(self, path: Path) -> ManifestObject:
        try:
            content = path.read_bytes()
            modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError as exc:
            raise DeliveryRejected(f"{path}: cannot read ({exc.strerror})") from None
        return ManifestObject(body=content, last_modified=modified)

    def manifest(self, bucket: str, key: str) -> ManifestObject:
        return self.manifest_file(self.resolve(key))

    def resolve(self, key: str) -> Path:
        for candidate in (self._data_dir / key, self._data_dir / PurePosixPath(key).name):
            if candidate.is_file():
                return candidate
        raise DeliveryRejected(f"{key}: not found under {self._data_dir}")

    def open_data_file(self, key: str) -> IO[bytes]:
        path = self.resolve(key)
        handle = path.open("rb")
        if self._progress is None:
            return handle
        return _CountingReader(handle, self._progress)  # type: ignore[return-value]

    def opener(self, bucket: str) -> OpenFile:
        return self.open_data_file


class _CountingReader:
    """A binary file that reports how many bytes were read (progress of local replays)."""

    def __init__(self, handle: IO[bytes], progress: Progress) -> None:
        self._handle = handle
        self._progress = progress
        self.name = handle.name

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._progress(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.close()


class ReportFilesReader:
    """``DeliveryReader`` on the DuckDB reader, with the data files opened by ``open_file_for``."""

    def __init__(self, open_file_for: Callable[[Delivery], OpenFile]) -> None:
        self._open_file_for = open_file_for

    def read(self, delivery: Delivery) -> ParsedDelivery:
        from billing.adapters.cost_export_reader import read_delivery  # noqa: PLC0415 - duckdb loads lazily

        return read_delivery(delivery, self._open_file_for(delivery))
