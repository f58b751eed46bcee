"""Shared fixtures: a migrated scratch database on a real Postgres (never mocked)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from billing.adapters.postgres.connection import forget_connection
from billing.adapters.postgres.migrate import apply_migrations
from billing.settings import get_api_settings, get_database_settings
from local.postgres import admin_database_url, scratch_database

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = REPO_ROOT / "events"

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "vendor-billing")

#: Every table with data, emptied between tests.
DATA_TABLES = (
    "ledger_entries, holds, deposits, outbox, usage_events, purchases, checkout_wallets, offers, "
    "appstore_lists, cost_export_charges, cost_export_deliveries, cost_export_staged_costs, "
    "provisioned_resources, provisioning_steps, usage_estimates"
)


def load_event(name: str) -> dict[str, Any]:
    """An ``events/<name>.json`` fixture (the same files ``make invoke`` uses)."""
    return dict(json.loads((EVENTS_DIR / f"{name}.json").read_text()))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with admin_database_url() as admin_url, scratch_database(admin_url, prefix="billing_test") as url:
        with psycopg.connect(url, autocommit=True) as connection:
            apply_migrations(connection)
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the migrated test database, emptied after each test."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
        connection.execute(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE")


@pytest.fixture
def handler_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point in-process handlers at the test database, with a fresh connection."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_database_settings.cache_clear()
    get_api_settings.cache_clear()
    forget_connection()
    yield
    forget_connection()
    get_database_settings.cache_clear()
