"""Buying an S3 bucket over real HTTP: the local runner provisions it on moto, GET shows the key once."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from local.runner import LocalServer
from local.seed import seed_demo
from local.template import DEFAULT_TEMPLATE_PATH
from tests.conftest import DATA_TABLES
from tests.e2e.conftest import Local

OFFER = "s3-bucket"


@pytest.fixture(scope="module")
def provisioning_local(database_url: str) -> Iterator[Local]:
    log = io.StringIO()
    with psycopg.connect(database_url, autocommit=True) as connection:
        try:
            with LocalServer(DEFAULT_TEMPLATE_PATH, database_url, log=log, provision_every_s=0.2) as server:
                yield Local(server, seed_demo(connection), log)
        finally:
            connection.execute(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE")


def _post(local: Local, path: str, body: dict[str, object]) -> dict[str, Any]:
    answer = local.request("POST", path, body=json.dumps(body).encode())
    assert answer.status in (200, 201), (answer.status, answer.body)
    document: dict[str, Any] = answer.json()
    return document


def test_buy_a_bucket_read_its_key_once_and_use_it(provisioning_local: Local) -> None:
    local = provisioning_local
    wallet = _post(local, f"/offer/{OFFER}/checkout/wallet/create", {"chain": "devchain", "token": "USDC"})
    _post(local, "/dev/faucet", {"token": "USDC", "to": wallet["address"], "amount": "10"})
    _post(local, "/dev/mine", {"blocks": 3})
    purchase = _post(
        local,
        f"/offer/{OFFER}/checkout/finalize",
        {
            "wallet_id": wallet["wallet_id"],
            "officex_purchase_id": "P1",
            "customer_org_id": "D1",
            "customer_user_id": "U1",
        },
    )
    assert purchase["resource"] == {"kind": "s3_bucket", "status": "provisioning"}  # no waiting locally
    assert purchase["resource_credentials"] is None
    path, key = f"/purchase/{purchase['purchase_id']}", purchase["customer_check_billing_api_key"]

    deadline = time.monotonic() + 20
    while True:
        read = local.request("GET", path, key=key).json()
        if read["resource"]["status"] != "provisioning" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    again = local.request("GET", path, key=key).json()

    assert read["resource"]["status"] == "active", (read, local.log.getvalue())
    credentials = read["resource_credentials"]
    assert credentials["bucket"] == read["resource"]["bucket"] == read["resource"]["name"]
    assert again["resource_credentials"] is None and again["resource"]["credentials"] == "shown"
    s3 = boto3.client(
        "s3",
        region_name=credentials["region"],
        aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"],
    )
    s3.put_object(Bucket=credentials["bucket"], Key="hello.txt", Body=b"hello")
    assert s3.get_object(Bucket=credentials["bucket"], Key="hello.txt")["Body"].read() == b"hello"
