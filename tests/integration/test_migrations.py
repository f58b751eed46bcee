from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from billing.adapters.postgres.maintenance import PostgresMaintenance
from billing.adapters.postgres.migrate import Migration, MigrationEdited, apply_migrations, bundled_migrations
from local.postgres import scratch_database


@pytest.fixture
def empty_database(database_url: str) -> Any:
    admin = conninfo_to_dict(database_url)
    admin["dbname"] = "postgres"
    with scratch_database(
        make_conninfo(**{k: str(v) for k, v in admin.items()}), prefix="billing_mig"
    ) as url:
        yield url


def test_migrations_are_numbered_and_applied_once(db: psycopg.Connection[Any]) -> None:
    versions = [migration.version for migration in bundled_migrations()]
    assert versions == sorted(versions) and all(version.isdigit() for version in versions)
    applied = [row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert applied == versions
    assert apply_migrations(db) == []


def test_concurrent_migrators_apply_each_migration_once(empty_database: str) -> None:
    results: list[list[str]] = []
    start = threading.Barrier(3)

    def migrate() -> None:
        with psycopg.connect(empty_database, autocommit=True) as connection:
            start.wait()
            results.append(apply_migrations(connection))

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    all_applied = sorted(version for result in results for version in result)
    assert all_applied == [migration.version for migration in bundled_migrations()]


def test_an_edited_applied_migration_is_refused(db: psycopg.Connection[Any]) -> None:
    first = bundled_migrations()[0]
    edited = Migration(version=first.version, name=first.name, sql=first.sql + "\n-- edited")
    with pytest.raises(MigrationEdited):
        apply_migrations(db, [edited])


def test_a_failing_migration_leaves_nothing_behind(empty_database: str) -> None:
    broken = [
        Migration("9001", "ok", "CREATE TABLE a (x int);"),
        Migration("9002", "bad", "CREATE TABLE b (;"),
    ]
    with psycopg.connect(empty_database, autocommit=True) as connection:
        with pytest.raises(psycopg.errors.SyntaxError):
            apply_migrations(connection, broken)
        assert connection.execute("SELECT to_regclass('a') IS NOT NULL, to_regclass('b')").fetchone() == (
            True,
            None,
        )
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
        assert versions == ["9001"]


def test_usage_events_use_native_monthly_partitions_without_timescale(db: psycopg.Connection[Any]) -> None:
    (timescale,) = db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone() or (None,)
    maintenance = PostgresMaintenance(db)
    expected = "hypertable" if timescale else "partitioned"
    assert maintenance.usage_events_storage() == expected
    if timescale:
        pytest.skip("TimescaleDB is installed here: the hypertable path is in use")
    maintenance.ensure_usage_event_partitions(months_back=1, months_ahead=3)
    assert maintenance.ensure_usage_event_partitions(months_back=1, months_ahead=3) == 0
    partitions = {
        row[0]
        for row in db.execute(
            """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'usage_events'::regclass"""
        )
    }
    now = datetime.now(UTC)
    assert f"usage_events_{now:%Y_%m}" in partitions
    assert len(partitions) >= 5
    db.execute(
        """INSERT INTO usage_events (purchase_id, occurred_at, idempotency_key, ledger_entry_id, meter,
                                      quantity, unit, cost_nano)
           VALUES (gen_random_uuid(), now(), 'k', 1, 'tokens', 10, 'tokens', 5)"""
    )
    (routed,) = db.execute("SELECT tableoid::regclass::text FROM usage_events").fetchone() or (None,)
    assert routed == f"usage_events_{now:%Y_%m}"
