"""Postgres side of the ledger: each operation is one statement.

The purchase row is updated and the ledger entry inserted by a single
data-modifying CTE, so the row lock on the purchase is held for one round trip
and the balance never moves without its entry. A repeated idempotency key
skips the update (``NOT EXISTS``); two racing first uses are settled by the
unique constraint, which :class:`DuplicateIdempotencyKey` turns into a retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from billing.domain.errors import StateConflict
from billing.domain.ledger import EntryKind, Funds, HoldState, LedgerOperation, LedgerReceipt

IDEMPOTENCY_CONSTRAINT = "ledger_entries_idempotency"
HOLDS_PRIMARY_KEY = "holds_pkey"


class DuplicateIdempotencyKey(Exception):
    """Another transaction used the same key first; the unit of work must be retried."""


_ENTRY_COLUMNS = """
    purchase_id, kind, amount_nano, held_delta_nano, balance_after_nano, held_after_nano,
    idempotency_key, request_fingerprint, hold_id, source, meter, quantity, unit, metadata
"""

_KEY_UNUSED = """
    NOT EXISTS (SELECT 1 FROM ledger_entries
                 WHERE purchase_id = %(purchase_id)s AND idempotency_key = %(key)s)
"""

#: Migration 0006's function: the conditional UPDATE + INSERT statement, planned once per session.
_APPLY_BALANCE_CHANGE = """
SELECT entry_id, balance_after, held_after, NULL::uuid
  FROM ledger_apply_balance_change(%(purchase_id)s, %(kind)s, %(amount)s, %(required)s, %(key)s,
                                   %(fingerprint)s, %(source)s, %(meter)s, %(quantity)s, %(unit)s,
                                   %(metadata)s)
"""

_PLACE_HOLD = f"""
WITH updated AS (
    UPDATE purchases
       SET held_nano = held_nano + %(held_delta)s, updated_at = now()
     WHERE id = %(purchase_id)s
       AND balance_nano - held_nano >= %(required)s::bigint
       AND {_KEY_UNUSED}
 RETURNING balance_nano, held_nano
), new_hold AS (
    INSERT INTO holds (id, purchase_id, amount_nano, expires_at)
    SELECT %(hold_id)s, %(purchase_id)s, %(held_delta)s, %(expires_at)s FROM updated
    RETURNING id
)
INSERT INTO ledger_entries ({_ENTRY_COLUMNS})
SELECT %(purchase_id)s, 'hold', 0, %(held_delta)s, updated.balance_nano, updated.held_nano,
       %(key)s, %(fingerprint)s, new_hold.id, %(source)s, NULL, NULL, NULL, %(metadata)s
  FROM updated, new_hold
RETURNING id, balance_after_nano, held_after_nano, hold_id
"""

_RELEASE_HOLD = f"""
WITH released AS (
    UPDATE holds
       SET status = %(hold_outcome)s, settled_at = now()
     WHERE id = %(hold_id)s AND purchase_id = %(purchase_id)s AND status = 'active'
       AND {_KEY_UNUSED}
 RETURNING id, amount_nano
), updated AS (
    UPDATE purchases p
       SET held_nano = p.held_nano - released.amount_nano, updated_at = now()
      FROM released
     WHERE p.id = %(purchase_id)s
 RETURNING p.balance_nano, p.held_nano, released.amount_nano, released.id AS hold_id
)
INSERT INTO ledger_entries ({_ENTRY_COLUMNS})
SELECT %(purchase_id)s, 'release', 0, -amount_nano, balance_nano, held_nano,
       %(key)s, %(fingerprint)s, hold_id, %(source)s, NULL, NULL, NULL, %(metadata)s
  FROM updated
RETURNING id, balance_after_nano, held_after_nano, hold_id, held_delta_nano
"""

_EXPIRE_HOLDS = f"""
WITH due AS (
    SELECT id FROM holds
     WHERE status = 'active' AND expires_at <= %(now)s
     ORDER BY expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), expired AS (
    UPDATE holds h SET status = 'expired', settled_at = now()
      FROM due WHERE h.id = due.id
 RETURNING h.id, h.purchase_id, h.amount_nano
), totals AS (
    SELECT purchase_id, sum(amount_nano)::bigint AS total FROM expired GROUP BY purchase_id
), updated AS (
    UPDATE purchases p SET held_nano = p.held_nano - totals.total, updated_at = now()
      FROM totals WHERE p.id = totals.purchase_id
 RETURNING p.id, p.balance_nano, p.held_nano
)
INSERT INTO ledger_entries ({_ENTRY_COLUMNS})
SELECT e.purchase_id, 'release', 0, -e.amount_nano, u.balance_nano,
       u.held_nano + COALESCE(sum(e.amount_nano) OVER (
           PARTITION BY e.purchase_id ORDER BY e.id ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0),
       'hold-expired:' || e.id, 'hold-expired', e.id, 'sweep', NULL, NULL, NULL, '{{}}'::jsonb
  FROM expired e JOIN updated u ON u.id = e.purchase_id
 ORDER BY e.purchase_id, e.id
RETURNING id
"""


class PostgresLedgerStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def try_apply(self, operation: LedgerOperation) -> LedgerReceipt | None:
        """Apply ``operation`` if its key is unused and its funds rule holds; else ``None``."""
        fingerprint = operation.fingerprint()
        params = {
            "purchase_id": operation.purchase_id,
            "key": operation.idempotency_key,
            "fingerprint": fingerprint,
            "kind": operation.kind.value,
            "amount": operation.amount_nano,
            "held_delta": operation.held_delta_nano,
            "required": operation.required_available_nano,
            "hold_id": operation.hold_id,
            "hold_outcome": operation.hold_outcome,
            "expires_at": operation.hold_expires_at,
            "source": operation.source,
            "meter": operation.meter,
            "quantity": operation.quantity,
            "unit": operation.unit,
            "metadata": Jsonb(operation.metadata),
        }
        if operation.kind is EntryKind.HOLD:
            statement = _PLACE_HOLD
        elif operation.kind is EntryKind.RELEASE:
            statement = _RELEASE_HOLD
        else:
            statement = _APPLY_BALANCE_CHANGE
        try:
            row = self._connection.execute(statement, params).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == IDEMPOTENCY_CONSTRAINT:
                raise DuplicateIdempotencyKey(operation.idempotency_key) from exc
            if exc.diag.constraint_name == HOLDS_PRIMARY_KEY:
                raise StateConflict("a hold with this id already exists") from exc
            raise
        if row is None:
            return None
        held_delta = row[4] if operation.kind is EntryKind.RELEASE else operation.held_delta_nano
        return LedgerReceipt(
            entry_id=row[0],
            purchase_id=operation.purchase_id,
            kind=operation.kind,
            amount_nano=operation.amount_nano,
            held_delta_nano=held_delta,
            balance_after_nano=row[1],
            held_after_nano=row[2],
            fingerprint=fingerprint,
            hold_id=row[3],
        )

    def find_entry(self, purchase_id: UUID, idempotency_key: str) -> LedgerReceipt | None:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(
                """SELECT id, kind, amount_nano, held_delta_nano, balance_after_nano, held_after_nano,
                          request_fingerprint, hold_id
                     FROM ledger_entries WHERE purchase_id = %s AND idempotency_key = %s""",
                (purchase_id, idempotency_key),
            ).fetchone()
        if row is None:
            return None
        return LedgerReceipt(
            entry_id=row["id"],
            purchase_id=purchase_id,
            kind=EntryKind(row["kind"]),
            amount_nano=row["amount_nano"],
            held_delta_nano=row["held_delta_nano"],
            balance_after_nano=row["balance_after_nano"],
            held_after_nano=row["held_after_nano"],
            fingerprint=row["request_fingerprint"],
            hold_id=row["hold_id"],
        )

    def funds(self, purchase_id: UUID) -> Funds | None:
        row = self._connection.execute(
            "SELECT balance_nano, held_nano FROM purchases WHERE id = %s", (purchase_id,)
        ).fetchone()
        return Funds(balance_nano=row[0], held_nano=row[1]) if row else None

    def hold(self, purchase_id: UUID, hold_id: UUID) -> HoldState | None:
        row = self._connection.execute(
            "SELECT status, amount_nano, expires_at FROM holds WHERE id = %s AND purchase_id = %s",
            (hold_id, purchase_id),
        ).fetchone()
        return HoldState(status=row[0], amount_nano=row[1], expires_at=row[2]) if row else None

    def expire_due_holds(self, now: datetime, limit: int) -> int:
        """Release up to ``limit`` holds past their expiry; returns how many."""
        return len(self._connection.execute(_EXPIRE_HOLDS, {"now": now, "limit": limit}).fetchall())
