"""Where the functions find Postgres: DATABASE_URL locally, the RDS secret (+ proxy host) on AWS."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from billing.adapters.postgres.connection import conninfo_for
from billing.settings import database_settings_from


@pytest.fixture
def rds_secret_arn(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        secret = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="rds!cluster-test",
            SecretString=json.dumps(
                {"username": "billing_app", "password": "s3cr3t-rotated", "host": "cluster.internal"}
            ),
        )
        yield secret["ARN"]


def test_rds_secret_and_proxy_host_make_the_connection_string(rds_secret_arn: str) -> None:
    settings = database_settings_from(
        {
            "DB_SECRET_ARN": rds_secret_arn,
            "DB_HOST": "proxy.internal",
            "DB_NAME": "billing",
            "DB_PORT": "6432",
        }
    )

    parts = conninfo_to_dict(conninfo_for(settings))

    assert parts["host"] == "proxy.internal"  # the RDS Proxy endpoint wins over the secret's host
    assert (parts["user"], parts["password"]) == ("billing_app", "s3cr3t-rotated")
    assert (parts["port"], parts["dbname"], parts["sslmode"]) == ("6432", "billing", "require")
    assert parts["options"] == "-c statement_timeout=10000"


def test_secret_host_is_used_without_a_proxy(rds_secret_arn: str) -> None:
    parts = conninfo_to_dict(conninfo_for(database_settings_from({"DB_SECRET_ARN": rds_secret_arn})))

    assert parts["host"] == "cluster.internal"


def test_database_url_wins_and_one_source_is_required() -> None:
    parts = conninfo_to_dict(conninfo_for(database_settings_from({"DATABASE_URL": "postgresql://u@h:1/d"})))
    assert (parts["host"], parts["port"], parts["dbname"]) == ("h", "1", "d")
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        database_settings_from({})
