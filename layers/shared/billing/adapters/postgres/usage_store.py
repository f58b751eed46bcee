"""Metered usage rows (the time series behind historical billing)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from billing.adapters.postgres.ledger_store import IDEMPOTENCY_CONSTRAINT, DuplicateIdempotencyKey
from billing.adapters.postgres.purchase_store import view_of
from billing.domain.errors import SAME_FOR_EVERY_AUTH_FAILURE, IdempotencyConflict, NotFound, Unauthorized
from billing.domain.ledger import EntryKind
from billing.domain.usage_charges import ChargedBatch, ChargedEntry, UsageCharge

#: Migration 0013's function: the key check, every event's debit and usage row, then the purchase as
#: PostgresPurchaseStore.view reads it, in one statement; its columns renamed as view_of() reads them.
_METER_USAGE_APPLY = """
    SELECT charged_ids, charged_amounts, charged_replays,
           view_id AS id, view_offer_id AS offer_id, view_status AS status, view_balance AS balance_nano,
           view_held AS held_nano, view_low_trigger AS low_trigger_nano,
           view_critical_trigger AS critical_trigger_nano,
           view_termination_trigger AS termination_trigger_nano,
           view_deposit_address AS deposit_address, view_deposit_chain_id AS deposit_chain_id,
           view_deposit_token AS deposit_token, view_resource AS resource, view_created_at AS created_at,
           view_updated_at AS updated_at, view_grace_until AS grace_until
      FROM meter_usage_apply(%s, %s, %s)"""
_KEY_REUSED = "BL409"
_NOT_THE_VENDOR_KEY = "BL401"
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

    def charge_batch(
        self, purchase_id: UUID, vendor_key_hash: bytes, charges: Sequence[UsageCharge]
    ) -> ChargedBatch:
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
            with self._connection.cursor(row_factory=dict_row) as cursor:
                arguments = (purchase_id, vendor_key_hash, Jsonb(events))
                row = cursor.execute(_METER_USAGE_APPLY, arguments).fetchone()
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
            if exc.sqlstate == _NOT_THE_VENDOR_KEY:
                raise Unauthorized(SAME_FOR_EVERY_AUTH_FAILURE) from exc
            if exc.sqlstate == _NO_PURCHASE:
                raise NotFound("purchase not found") from exc
            raise
        assert row is not None  # the function answers one row or raises
        entries = zip(row["charged_ids"], row["charged_amounts"], row["charged_replays"], strict=True)
        return ChargedBatch(
            entries=[ChargedEntry(*entry) for entry in entries],
            purchase=view_of(row),
        )
