"""S3 usage of provisioned buckets from CloudWatch: ``GetMetricData``, batched, with explicit timeouts.

Per bucket (namespace ``AWS/S3``):

- storage metrics (daily): ``BucketSizeBytes`` per ``StorageType`` (Average over 1 day) and
  ``NumberOfObjects`` (``AllStorageTypes``);
- request metrics (per minute, only with the bucket's metrics configuration ``EntireBucket``,
  which provisioning enables): ``AllRequests``, ``GetRequests``, ``PutRequests``,
  ``BytesDownloaded``, summed per hour (the hours of a day add up to the day so far).

Queries are grouped per region (metrics are regional) and sent 500 at a time (the API's limit),
following ``NextToken``. A batch that fails (throttling, network, access denied) is reported per
bucket in ``UsageReadout.failed`` and does not stop the others: the estimator charges nothing for
those buckets this run and catches up in a later one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Protocol

from billing.adapters.aws.clients import boto3_client, error_code
from billing.domain.usage_estimates import STORAGE_TYPES, BucketRef, DayUsage, UsageReadout

NAMESPACE = "AWS/S3"
REQUEST_METRICS_FILTER = "EntireBucket"  # the provisioner's metrics configuration id
MAX_QUERIES_PER_CALL = 500
STORAGE_PERIOD_S = 86_400
REQUEST_PERIOD_S = 3_600
_REQUEST_METRICS = {
    "AllRequests": "all_requests",
    "GetRequests": "get_requests",
    "PutRequests": "put_requests",
    "BytesDownloaded": "bytes_downloaded",
}


class CloudWatchClient(Protocol):
    def get_metric_data(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Query:
    bucket: str
    metric: str
    storage_type: str | None = None


def _queries_for(bucket: str) -> list[_Query]:
    queries = [_Query(bucket, "BucketSizeBytes", storage_type) for storage_type in STORAGE_TYPES]
    queries.append(_Query(bucket, "NumberOfObjects", "AllStorageTypes"))
    queries.extend(_Query(bucket, metric) for metric in _REQUEST_METRICS)
    return queries


def _metric_data_query(query_id: str, query: _Query) -> dict[str, Any]:
    dimensions = [{"Name": "BucketName", "Value": query.bucket}]
    if query.storage_type is not None:
        dimensions.append({"Name": "StorageType", "Value": query.storage_type})
        period, stat = STORAGE_PERIOD_S, "Average"
    else:
        dimensions.append({"Name": "FilterId", "Value": REQUEST_METRICS_FILTER})
        period, stat = REQUEST_PERIOD_S, "Sum"
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {"Namespace": NAMESPACE, "MetricName": query.metric, "Dimensions": dimensions},
            "Period": period,
            "Stat": stat,
        },
        "ReturnData": True,
    }


def _utc_day(timestamp: datetime) -> date:
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).date()


def _add(usage: dict[date, DayUsage], query: _Query, timestamp: datetime, value: Any) -> None:
    amount = Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        return
    day = usage.setdefault(_utc_day(timestamp), DayUsage())
    if query.metric == "BucketSizeBytes" and query.storage_type is not None:
        if amount > 0:
            day.storage_bytes[query.storage_type] = amount  # one datapoint per day (daily period)
    elif query.metric == "NumberOfObjects":
        day.objects = amount
    else:
        attribute = _REQUEST_METRICS[query.metric]
        setattr(day, attribute, (getattr(day, attribute) or Decimal(0)) + amount)


class CloudWatchUsageMetrics:
    def __init__(
        self,
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_attempts = max_attempts
        self._clients: dict[str, CloudWatchClient] = {}
        self._lock = threading.Lock()

    def read_usage(self, buckets: Sequence[BucketRef], first_day: date, window_end: datetime) -> UsageReadout:
        """Usage per bucket and UTC day, from ``first_day`` 00:00 UTC up to ``window_end``."""
        readout = UsageReadout()
        start = datetime.combine(first_day, time(0), tzinfo=UTC)
        if window_end <= start:
            return readout
        by_region: dict[str, list[str]] = {}
        for ref in buckets:
            by_region.setdefault(ref.region, []).append(ref.bucket)
        for region, names in sorted(by_region.items()):
            queries = [query for name in sorted(set(names)) for query in _queries_for(name)]
            for offset in range(0, len(queries), MAX_QUERIES_PER_CALL):
                batch = queries[offset : offset + MAX_QUERIES_PER_CALL]
                self._read_batch(region, batch, start, window_end, readout)
        return readout

    def _read_batch(
        self, region: str, batch: list[_Query], start: datetime, end: datetime, readout: UsageReadout
    ) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        by_id = {f"q{index}": query for index, query in enumerate(batch)}
        collected: dict[str, dict[date, DayUsage]] = {}
        request: dict[str, Any] = {
            "MetricDataQueries": [_metric_data_query(query_id, query) for query_id, query in by_id.items()],
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending",
        }
        try:
            client = self._client(region)
            while True:
                answer = client.get_metric_data(**request)
                for result in answer.get("MetricDataResults", []):
                    query = by_id.get(result.get("Id", ""))
                    if query is None:
                        continue
                    bucket_days = collected.setdefault(query.bucket, {})
                    for timestamp, value in zip(
                        result.get("Timestamps", []), result.get("Values", []), strict=False
                    ):
                        _add(bucket_days, query, timestamp, value)
                token = answer.get("NextToken")
                if not token:
                    break
                request["NextToken"] = token
        except ClientError as exc:
            code = error_code(exc) or "an error"
            self._fail(readout, batch, f"CloudWatch GetMetricData in {region} answered {code}")
            return
        except BotoCoreError as exc:
            self._fail(readout, batch, f"CloudWatch in {region} is unreachable ({type(exc).__name__})")
            return
        for bucket in {query.bucket for query in batch}:
            if bucket in readout.failed:
                continue
            days = readout.usage.setdefault(bucket, {})
            for day, found in collected.get(bucket, {}).items():
                _merge(days.setdefault(day, DayUsage()), found)

    @staticmethod
    def _fail(readout: UsageReadout, batch: list[_Query], reason: str) -> None:
        for bucket in {query.bucket for query in batch}:
            readout.failed[bucket] = reason
            readout.usage.pop(bucket, None)  # half a bucket's metrics would under-estimate it

    def _client(self, region: str) -> CloudWatchClient:
        with self._lock:  # boto3 sessions are not thread-safe
            if region not in self._clients:
                self._clients[region] = boto3_client(
                    "cloudwatch",
                    region=region,
                    connect_timeout_s=self._connect_timeout_s,
                    read_timeout_s=self._read_timeout_s,
                    attempts=self._max_attempts,
                )
            return self._clients[region]


def _merge(into: DayUsage, other: DayUsage) -> None:
    """A bucket's queries may span two batches: combine what each batch found."""
    into.storage_bytes.update(other.storage_bytes)
    if other.objects is not None:
        into.objects = other.objects
    for attribute in _REQUEST_METRICS.values():
        value = getattr(other, attribute)
        if value is not None:
            setattr(into, attribute, (getattr(into, attribute) or Decimal(0)) + value)
