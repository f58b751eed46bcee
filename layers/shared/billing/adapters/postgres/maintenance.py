"""Housekeeping the sweep runs: time-series partitions ahead of time."""

from __future__ import annotations

from typing import Any

import psycopg


class PostgresMaintenance:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def ensure_usage_event_partitions(self, months_back: int = 2, months_ahead: int = 3) -> int:
        row = self._connection.execute(
            """SELECT ensure_usage_events_partitions(
                   (date_trunc('month', now()) - make_interval(months => %s))::date, %s)""",
            (months_back, months_back + months_ahead + 1),
        ).fetchone()
        return int(row[0]) if row else 0

    def usage_events_storage(self) -> str:
        """``hypertable``, ``partitioned`` or ``plain``: how usage_events is stored here."""
        has_timescale = self._connection.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
        ).fetchone()
        if has_timescale and has_timescale[0]:
            is_hypertable = self._connection.execute(
                """SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                                   WHERE hypertable_name = 'usage_events')"""
            ).fetchone()
            if is_hypertable and is_hypertable[0]:
                return "hypertable"
        kind = self._connection.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'usage_events'::regclass"
        ).fetchone()
        return "partitioned" if kind and kind[0] == "p" else "plain"
