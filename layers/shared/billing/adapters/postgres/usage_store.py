"""Metered usage rows (the time series behind historical billing)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb


class PostgresUsageStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def record(
        self,
        *,
        purchase_id: UUID,
        occurred_at: datetime,
        idempotency_key: str,
        ledger_entry_id: int,
        meter: str,
        quantity: str,
        unit: str,
        cost_nano: int,
        description: str | None,
        metadata: dict[str, Any],
    ) -> None:
        self._connection.execute(
            """INSERT INTO usage_events (purchase_id, occurred_at, idempotency_key, ledger_entry_id, meter,
                                         quantity, unit, cost_nano, description, metadata)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                purchase_id,
                occurred_at,
                idempotency_key,
                ledger_entry_id,
                meter,
                quantity,
                unit,
                cost_nano,
                description,
                Jsonb(metadata),
            ),
        )
