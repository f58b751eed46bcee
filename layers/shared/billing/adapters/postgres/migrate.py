"""Numbered SQL migrations: each applied once, in order, in its own transaction.

Safe to run from several places at once (an advisory lock serialises them) and
refuses to run when an applied migration's file was edited afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

_MIGRATIONS_LOCK_ID = 0x0FF1CE  # pg_advisory_xact_lock key shared by every migrator


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationEdited(Exception):
    """An already applied migration no longer matches its file."""


def bundled_migrations() -> list[Migration]:
    folder = resources.files("billing.adapters.postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version=version, name=rest.removesuffix(".sql"), sql=entry.read_text()))
    return sorted(found, key=lambda migration: migration.version)


def apply_migrations(
    connection: psycopg.Connection[Any], migrations: list[Migration] | None = None
) -> list[str]:
    """Apply what is missing; returns the versions applied by this call."""
    applied_now = []
    for migration in migrations if migrations is not None else bundled_migrations():
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATIONS_LOCK_ID,))
            connection.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            row = connection.execute(
                "SELECT checksum FROM schema_migrations WHERE version = %s", (migration.version,)
            ).fetchone()
            if row is not None:
                if row[0] != migration.checksum:
                    raise MigrationEdited(f"migration {migration.version} was changed after it was applied")
                continue
            connection.execute(migration.sql.encode())
            connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration.version)
    return applied_now


def main() -> None:
    parser = argparse.ArgumentParser(description="Apply the bundled SQL migrations to DATABASE_URL.")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    arguments = parser.parse_args()
    if not arguments.database_url:
        parser.error("give --database-url or set DATABASE_URL")
    with psycopg.connect(arguments.database_url, autocommit=True) as connection:
        applied = apply_migrations(connection)
    print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")


if __name__ == "__main__":
    main()
