"""Cost-export manifests: which S3 objects start a delivery, and what a delivery is (pure).

A delivery starts when its manifest lands in the report bucket. Two layouts exist:

* **Legacy CUR** (CUR 1.0)::

      <prefix>/<report>/<yyyymmdd-yyyymmdd>/<report>-Manifest.json               (latest delivery)
      <prefix>/<report>/<yyyymmdd-yyyymmdd>/<assemblyId>/<report>-Manifest.json  (one per delivery)

  JSON with ``assemblyId``, ``reportName``, ``billingPeriod`` ``{"start": "20231101T000000.000Z",
  "end": …}``, ``bucket`` and ``reportKeys`` (object keys of the data files, relative to the
  bucket). With "create new report version" AWS writes the same manifest twice (the date-range
  folder and the assembly folder): both name the same ``assemblyId``, i.e. the same delivery.
* **Data Exports** (CUR 2.0 and FOCUS)::

      <prefix>/<export>/metadata/BILLING_PERIOD=YYYY-MM/[…/]<export>-Manifest.json
      <prefix>/<export>/data/BILLING_PERIOD=YYYY-MM/[…/]<export>-00001.csv.gz | .parquet

  JSON with ``executionId``, ``exportArn``/``exportName``, ``billingPeriod`` and ``dataFiles``
  (``s3://bucket/key`` URIs; ``reportKeys`` is accepted as well), plus ``columns``
  (``[{"name": …, "type": …}]``), from which FOCUS (``BilledCost``…) is told from CUR 2.0.

``parse_manifest`` returns the :class:`~billing.domain.cost_export.Delivery`: exactly the data
files the manifest lists, in its order. Anything that cannot be billed safely raises
``DeliveryRejected`` with a reason an operator can act on: JSON that is not an object, no
delivery id, a billing period that disagrees with the key, data files in another bucket or
in a format we do not read (ZIP), or no data file at all (an empty month-to-date delivery
would restate every charge of the month to zero).

``is_manifest_key`` tells the Lambda which objects to act on (the S3 notification filters on the
``Manifest.json`` suffix, which also matches e.g. ``…-RedshiftManifest.json``); S3 event keys arrive
URL-encoded, ``decode_s3_event_key`` decodes them first.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

from billing.domain.cost_export import Delivery, DeliveryRejected, ExportFormat

MANIFEST_SUFFIX = "-Manifest.json"
#: Data file names the reader understands (lower-cased suffixes).
READABLE_SUFFIXES = (".csv.gz", ".csv.gzip", ".gz", ".csv", ".parquet")

_DATE_RANGE = re.compile(r"^(\d{8})-(\d{8})$")
_PARTITION = re.compile(r"^BILLING_PERIOD=(\d{4})-(\d{2})$")
_FOCUS_COLUMNS = {"BilledCost", "ChargePeriodStart", "ChargeCategory"}
_S3_URI = re.compile(r"^s3://([^/]+)/(.+)$")
_MAX_REASON_VALUE = 120


def decode_s3_event_key(raw_key: str) -> str:
    """The object key of an S3 event record (URL-encoded, spaces as ``+``) as S3 stores it."""
    return unquote_plus(raw_key)


def _layout(key: str) -> ExportFormat | None:
    """``LEGACY_CUR`` or ``CUR2`` (any Data Exports) from the key's shape, ``None`` if not a manifest."""
    parts = key.split("/")
    name = parts[-1]
    if not name.endswith(MANIFEST_SUFFIX) or len(name) == len(MANIFEST_SUFFIX):
        return None
    folders = parts[:-1]
    for index in range(len(folders) - 1):
        if folders[index] == "metadata" and _PARTITION.match(folders[index + 1]):
            return ExportFormat.CUR2
    # Legacy: the date-range folder holds the manifest, or the assembly folder that holds it.
    if folders and _DATE_RANGE.match(folders[-1]):
        return ExportFormat.LEGACY_CUR
    if len(folders) >= 2 and _DATE_RANGE.match(folders[-2]):
        return ExportFormat.LEGACY_CUR
    return None


def is_manifest_key(key: str) -> bool:
    """True for the manifest of a legacy CUR or Data Exports delivery (decoded key)."""
    return _layout(key) is not None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REASON_VALUE else text[: _MAX_REASON_VALUE - 1] + "…"


def _reject(key: str, why: str) -> DeliveryRejected:
    return DeliveryRejected(f"manifest {key}: {why}")


def _aware_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("last_modified must be timezone-aware (S3 reports UTC)")
    return moment.astimezone(UTC)


def _period_start(text: object) -> date | None:
    """First day of the month a manifest's ``billingPeriod.start`` names, ``None`` if unreadable.

    Legacy manifests write ``20231101T000000.000Z``; ISO forms (``2023-11-01T00:00:00Z``,
    ``2023-11-01``) are accepted too.
    """
    if not isinstance(text, str):
        return None
    match = re.match(r"^(\d{4})-?(\d{2})-?(\d{2})", text.strip())
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _billing_period_from(manifest: dict[str, Any]) -> object:
    period = manifest.get("billingPeriod")
    return period.get("start") if isinstance(period, dict) else None


def _key_period(key: str, layout: ExportFormat) -> tuple[date, str]:
    """(first day of the billing period, report or export name) from the manifest's key."""
    parts = key.split("/")
    folders = parts[:-1]
    if layout is ExportFormat.LEGACY_CUR:
        index = len(folders) - 1 if _DATE_RANGE.match(folders[-1]) else len(folders) - 2
        match = _DATE_RANGE.match(folders[index])
        assert match is not None
        start = match[1]
        name = folders[index - 1] if index >= 1 else ""
    else:
        index = next(
            i
            for i in range(len(folders) - 1)
            if folders[i] == "metadata" and _PARTITION.match(folders[i + 1])
        )
        partition = _PARTITION.match(folders[index + 1])
        assert partition is not None
        start = f"{partition[1]}{partition[2]}01"
        name = folders[index - 1] if index >= 1 else ""
    try:
        first = date(int(start[:4]), int(start[4:6]), int(start[6:8]))
    except ValueError:
        raise _reject(key, "the billing period in the key is not a date") from None
    if first.day != 1:
        raise _reject(key, f"the billing period in the key starts on {first}, not on the first of a month")
    if not name:
        name = parts[-1][: -len(MANIFEST_SUFFIX)]
    return first, name


def _check_suffix(manifest_key: str, data_key: str) -> None:
    lowered = data_key.lower()
    if lowered.endswith(".zip"):
        raise _reject(
            manifest_key,
            f"data file {data_key} is ZIP-compressed, which is not read: set the report's "
            "compression to GZIP (or Parquet)",
        )
    if not lowered.endswith(READABLE_SUFFIXES):
        raise _reject(manifest_key, f"data file {data_key} is neither gzip CSV, CSV nor Parquet")


def _data_keys(
    manifest: dict[str, Any], field_names: tuple[str, ...], bucket: str, key: str
) -> tuple[str, ...]:
    listed: object = None
    for field_name in field_names:
        if field_name in manifest:
            listed = manifest[field_name]
            break
    else:
        raise _reject(key, f"it lists no data files (no {' or '.join(field_names)})")
    if not isinstance(listed, list):
        raise _reject(key, f"the data file list is not a list: {_shown(listed)}")
    if not listed:
        raise _reject(
            key,
            "it lists no data files; an empty month-to-date delivery is not applied "
            "(it would restate the whole month to zero)",
        )
    keys: list[str] = []
    for item in listed:
        if not isinstance(item, str) or not item.strip():
            raise _reject(key, f"a data file entry is not an object key: {_shown(item)}")
        uri = _S3_URI.match(item)
        if uri is not None:
            if uri[1] != bucket:
                raise _reject(key, f"data file {item} is in bucket {uri[1]}, not in {bucket}")
            data_key = uri[2]
        elif item.startswith("s3://"):
            raise _reject(key, f"data file {_shown(item)} is not an s3://bucket/key URI")
        else:
            data_key = item.lstrip("/")
        _check_suffix(key, data_key)
        if data_key in keys:
            raise _reject(key, f"data file {data_key} is listed twice")
        keys.append(data_key)
    return tuple(keys)


def _delivery_id(manifest: dict[str, Any], field_name: str, key: str) -> str:
    value = manifest.get(field_name)
    if not isinstance(value, str) or not value.strip():
        raise _reject(key, f"it has no {field_name} (the id of the delivery): {_shown(value)}")
    return value.strip()


def _check_period(manifest: dict[str, Any], from_key: date, key: str) -> None:
    stated = _billing_period_from(manifest)
    if stated is None:
        return
    start = _period_start(stated)
    if start is None:
        raise _reject(key, f"billingPeriod.start is not a date: {_shown(stated)}")
    if start != from_key:
        raise _reject(key, f"billingPeriod.start {start} disagrees with the period in the key ({from_key})")


def _check_bucket(manifest: dict[str, Any], bucket: str, key: str) -> None:
    named = manifest.get("bucket")
    if isinstance(named, str) and named and named != bucket:
        raise _reject(key, f"it describes files in bucket {named}, but it was delivered to {bucket}")


def _data_exports_format(manifest: dict[str, Any]) -> ExportFormat:
    columns = manifest.get("columns")
    names: set[str] = set()
    if isinstance(columns, list):
        for column in columns:
            if isinstance(column, dict) and isinstance(column.get("name"), str):
                names.add(column["name"])
            elif isinstance(column, str):
                names.add(column)
    return ExportFormat.FOCUS if names >= _FOCUS_COLUMNS else ExportFormat.CUR2


def parse_manifest(bucket: str, key: str, body: bytes, last_modified: datetime) -> Delivery:
    """The delivery the manifest at ``s3://bucket/key`` describes (see the module docstring).

    ``key`` is decoded (``decode_s3_event_key``); ``last_modified`` is when S3 stored the
    manifest (timezone-aware) and orders the deliveries of a period. Raises
    ``DeliveryRejected`` for anything that is not a usable manifest.
    """
    layout = _layout(key)
    if layout is None:
        raise _reject(
            key, "not a cost-export manifest key (…-Manifest.json of a CUR or Data Exports delivery)"
        )
    delivered_at = _aware_utc(last_modified)
    try:
        manifest = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise _reject(key, f"not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise _reject(key, f"not a JSON object but {type(manifest).__name__}")
    period, name_from_key = _key_period(key, layout)
    _check_period(manifest, period, key)
    _check_bucket(manifest, bucket, key)
    if layout is ExportFormat.LEGACY_CUR:
        if "executionId" in manifest and "assemblyId" not in manifest:
            raise _reject(key, "a Data Exports manifest (executionId) in a legacy CUR folder layout")
        delivery_id = _delivery_id(manifest, "assemblyId", key)
        report = manifest.get("reportName")
        report_name = report if isinstance(report, str) and report else name_from_key
        data_keys = _data_keys(manifest, ("reportKeys",), bucket, key)
        export_format = ExportFormat.LEGACY_CUR
    else:
        delivery_id = _delivery_id(manifest, "executionId", key)
        export = manifest.get("exportName")
        report_name = export if isinstance(export, str) and export else name_from_key
        data_keys = _data_keys(manifest, ("dataFiles", "reportKeys"), bucket, key)
        export_format = _data_exports_format(manifest)
    return Delivery(
        format=export_format,
        report_name=report_name,
        billing_period=period,
        delivery_id=delivery_id,
        delivered_at=delivered_at,
        bucket=bucket,
        manifest_key=key,
        data_keys=data_keys,
    )


def data_file_kind(data_key: str) -> str:
    """``"csv.gz"``, ``"csv"`` or ``"parquet"`` for a data key the manifest parser accepted."""
    lowered = PurePosixPath(data_key).name.lower()
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith((".gz", ".gzip")):
        return "csv.gz"
    return "csv"
