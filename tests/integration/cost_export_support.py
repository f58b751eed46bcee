"""A legacy CUR delivery (its manifest and one gzip CSV) and a moto S3 with the report bucket."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from local.events import COST_REPORT_BUCKET, LEGACY_DATA_FILE_KEY

ASSEMBLY = "7f0c1a7e-0000-4000-8000-000000000000"
CUR_HEADER = [
    "identity/LineItemId",
    "lineItem/LineItemType",
    "lineItem/UsageStartDate",
    "lineItem/ProductCode",
    "lineItem/UsageType",
    "lineItem/ResourceId",
    "lineItem/UnblendedCost",
]
ROWS = [
    ["1", "Usage", "2023-11-01T00:00:00Z", "AmazonS3", "TimedStorage-ByteHrs", "bucket-a", "0.0123456789"],
    ["2", "Usage", "2023-11-01T00:00:00Z", "AmazonS3", "Requests-Tier1", "bucket-a", "0.000005"],
    ["3", "Usage", "2023-11-02T00:00:00Z", "AmazonS3", "DataTransfer-Out-Bytes", "bucket-a", "1.5E-1"],
    ["4", "Credit", "2023-11-02T00:00:00Z", "AmazonS3", "DataTransfer-Out-Bytes", "bucket-a", "-0.05"],
    ["5", "Usage", "2023-11-01T00:00:00Z", "AmazonEC2", "BoxUsage:t3.micro", "i-0abc", "0.25"],
]


def gzip_csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CUR_HEADER)
    writer.writerows(rows)
    return gzip.compress(buffer.getvalue().encode())


def legacy_manifest(assembly: str = ASSEMBLY, data_key: str = LEGACY_DATA_FILE_KEY) -> bytes:
    return json.dumps(
        {
            "assemblyId": assembly,
            "account": "123456789012",
            "columns": [{"category": "lineItem", "name": "UnblendedCost"}],
            "charset": "UTF-8",
            "compression": "GZIP",
            "contentType": "text/csv",
            "reportId": "0f0f",
            "reportName": "officex-cur",
            "billingPeriod": {"start": "20231101T000000.000Z", "end": "20231201T000000.000Z"},
            "bucket": COST_REPORT_BUCKET,
            "reportKeys": [data_key],
        }
    ).encode()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto S3 client (fake credentials, no profile) with the cost-report bucket created."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=COST_REPORT_BUCKET)
        yield client
