"""Metered usage rows (the time series behind historical billing)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from billing.adapters.postgres.ledger_store import IDEMPOTENCY_CONSTRAINT, DuplicateIdempotencyKey
from billing.domain.errors import IdempotencyConflict, NotFound
from billing.domain.ledger import EntryKind
from billing.domain.purchase import PurchaseStatus, Triggers
from billing.services.metering import ChargedBatch, ChargedEntry, UsageCharge

#: Migration 0010's function: every event's debit and usage row, then the purchase, in one statement.
_METER_USAGE_APPLY = "SELECT * FROM meter_usage_apply(%s, %s)"
_KEY_REUSED = "BL409"
_NO_PURCHASE = "BL404"


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

    def charge_batch(self, purchase_id: UUID, charges: Sequence[UsageCharge]) -> ChargedBatch:
        """Charge every event in one statement (atomic on its own: all events, or none)."""
        events = []
        for charge in charges:
            operation = charge.operation
            # meter_usage_apply() writes usage debits that never require available funds
            assert operation.kind is EntryKind.USAGE and operation.required_available_nano is None
            events.append(
                {
                    "key": operation.idempotency_key,
                    "fingerprint": operation.fingerprint(),
                    "amount": operation.amount_nano,
                    "meter": operation.meter,
                    "quantity": operation.quantity,
                    "unit": operation.unit,
                    "ledger_metadata": operation.metadata,
                    "occurred_at": charge.occurred_at.isoformat(),
                    "cost": charge.cost_nano,
                    "description": charge.description,
                    "usage_metadata": charge.usage_metadata,
                }
            )
        try:
            rows = self._connection.execute(_METER_USAGE_APPLY, (purchase_id, Jsonb(events))).fetchall()
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == IDEMPOTENCY_CONSTRAINT:  # a racing first use: retry whole
                raise DuplicateIdempotencyKey(exc.diag.message_detail or "") from exc
            raise
        except psycopg.Error as exc:
            if exc.sqlstate == _KEY_REUSED:
                raise IdempotencyConflict(
                    "this idempotency key was already used for a different request",
                    extra={"idempotency_key": exc.diag.message_detail},
                ) from exc
            if exc.sqlstate == _NO_PURCHASE:
                raise NotFound("purchase not found") from exc
            raise
        last = rows[-1]
        return ChargedBatch(
            entries=[ChargedEntry(row[0], row[1], row[2]) for row in rows if row[0] is not None],
            status=PurchaseStatus(last[3]),
            balance_nano=last[4],
            held_nano=last[5],
            grace_until=last[6],
            updated_at=last[7],
            triggers=Triggers(low_nano=last[8], critical_nano=last[9], termination_nano=last[10]),
        )
