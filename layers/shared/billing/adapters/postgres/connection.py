"""One Postgres connection per Lambda container, opened lazily and reused.

The local runner serves requests from several threads, so the connection is
kept per thread: in Lambda there is exactly one thread, hence one connection.
``prepare_threshold=None`` keeps it usable through RDS Proxy (no server-side
prepared statements pinning the session).
"""

from __future__ import annotations

import threading

import psycopg
from psycopg.conninfo import make_conninfo

from billing.adapters.aws.secrets import read_json_secret
from billing.settings import DatabaseSettings, get_database_settings

_local = threading.local()


def conninfo_for(settings: DatabaseSettings) -> str:
    options = f"-c statement_timeout={settings.statement_timeout_ms}"
    if settings.url:
        return make_conninfo(settings.url, connect_timeout=settings.connect_timeout_s, options=options)
    assert settings.secret_arn is not None  # guaranteed by DatabaseSettings
    secret = read_json_secret(settings.secret_arn)
    return make_conninfo(
        host=settings.host or secret["host"],
        port=settings.port,
        dbname=settings.name or secret.get("dbname"),
        user=secret["username"],
        password=secret["password"],
        sslmode=settings.sslmode,
        connect_timeout=settings.connect_timeout_s,
        options=options,
        application_name="officex-vendor-billing",
    )


def open_connection(conninfo: str) -> psycopg.Connection[tuple[object, ...]]:
    connection = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
    return connection


def shared_connection() -> psycopg.Connection[tuple[object, ...]]:
    """The container's connection; reopened if the previous one broke."""
    connection: psycopg.Connection[tuple[object, ...]] | None = getattr(_local, "connection", None)
    if connection is None or connection.closed or connection.broken:
        connection = open_connection(conninfo_for(get_database_settings()))
        _local.connection = connection
    return connection


def forget_connection() -> None:
    """Drop this thread's connection (tests, and after a broken transaction)."""
    connection = getattr(_local, "connection", None)
    _local.connection = None
    if connection is not None and not connection.closed:
        connection.close()


def database_answers() -> bool:
    """``SELECT 1`` on the container's connection; ``False`` instead of raising."""
    try:
        shared_connection().execute("SELECT 1")
        return True
    except psycopg.Error:
        forget_connection()
        return False
