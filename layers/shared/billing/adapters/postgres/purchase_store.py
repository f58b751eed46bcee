"""Purchases in Postgres: creation, credentials for auth, the customer's view."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from billing.domain.purchase import NewPurchase, PurchaseCredentials, PurchaseStatus, PurchaseView, Triggers

_END_GRACE_PERIODS = """
WITH due AS (
    SELECT id FROM purchases
     WHERE status = 'suspended' AND grace_until <= %(now)s
       -- a top-up on its way that would lift the suspension keeps the purchase (migration 0011)
       AND NOT purchase_rescue_pending(id)
     ORDER BY grace_until
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE purchases p SET status = 'terminated', updated_at = now()
  FROM due WHERE p.id = due.id
RETURNING p.id
"""

# The trigger of migration 0007 keeps every status current as balances move; this catches
# anything it could not see (rows written before it existed, statuses edited by hand).
_REEVALUATE_STATUSES = """
WITH stale AS (
    SELECT id FROM purchases
     WHERE status <> 'terminated'
       AND status <> purchase_status_for(status, balance_nano, low_trigger_nano,
                                         critical_trigger_nano, termination_trigger_nano)
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE purchases p
   SET status = purchase_status_for(p.status, p.balance_nano, p.low_trigger_nano,
                                    p.critical_trigger_nano, p.termination_trigger_nano),
       updated_at = now()
  FROM stale WHERE p.id = stale.id
RETURNING p.id
"""


class PostgresPurchaseStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def insert(self, purchase: NewPurchase) -> None:
        self._connection.execute(
            """INSERT INTO purchases (id, offer_id, wallet_id, officex_purchase_id, customer_org_id,
                   customer_user_id, customer_org_endpoint, low_trigger_nano, critical_trigger_nano,
                   termination_trigger_nano, customer_key_hash, vendor_key_hash, resource,
                   customer_org_api_key_ciphertext, notify_email, webhook_url, webhook_secret_ciphertext,
                   grace_period)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                purchase.id,
                purchase.offer_id,
                purchase.wallet_id,
                purchase.officex_purchase_id,
                purchase.customer_org_id,
                purchase.customer_user_id,
                purchase.customer_org_endpoint,
                purchase.triggers.low_nano,
                purchase.triggers.critical_nano,
                purchase.triggers.termination_nano,
                purchase.customer_key_hash,
                purchase.vendor_key_hash,
                Jsonb(purchase.resource),
                purchase.customer_org_api_key_ciphertext,
                purchase.notify_email,
                purchase.webhook_url,
                purchase.webhook_secret_ciphertext,
                purchase.grace_period,
            ),
        )

    def credentials(self, purchase_id: UUID) -> PurchaseCredentials | None:
        row = self._connection.execute(
            "SELECT customer_key_hash, vendor_key_hash FROM purchases WHERE id = %s", (purchase_id,)
        ).fetchone()
        return PurchaseCredentials(bytes(row[0]), bytes(row[1])) if row else None

    def view(self, purchase_id: UUID) -> PurchaseView | None:
        row = self._view_row(purchase_id)
        return view_of(row) if row is not None else None

    def view_with_credentials(self, purchase_id: UUID) -> tuple[PurchaseView, PurchaseCredentials] | None:
        """The view and the key hashes in one read (the same row): authenticate and read at once."""
        row = self._view_row(purchase_id)
        if row is None:
            return None
        return view_of(row), PurchaseCredentials(
            bytes(row["customer_key_hash"]), bytes(row["vendor_key_hash"])
        )

    def _view_row(self, purchase_id: UUID) -> dict[str, Any] | None:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(
                """SELECT p.*, w.address AS deposit_address, w.chain_id AS deposit_chain_id,
                          w.token AS deposit_token
                     FROM purchases p LEFT JOIN checkout_wallets w ON w.id = p.wallet_id
                    WHERE p.id = %s""",
                (purchase_id,),
            ).fetchone()

    def end_grace_periods(self, now: datetime, limit: int) -> int:
        """Terminate up to ``limit`` suspended purchases whose grace period is over."""
        return len(self._connection.execute(_END_GRACE_PERIODS, {"now": now, "limit": limit}).fetchall())

    def reevaluate_statuses(self, limit: int) -> int:
        """Move up to ``limit`` purchases whose status disagrees with their balance; returns how many."""
        return len(self._connection.execute(_REEVALUATE_STATUSES, {"limit": limit}).fetchall())


def view_of(row: dict[str, Any]) -> PurchaseView:
    return PurchaseView(
        id=row["id"],
        offer_id=row["offer_id"],
        status=PurchaseStatus(row["status"]),
        balance_nano=row["balance_nano"],
        held_nano=row["held_nano"],
        triggers=Triggers(
            low_nano=row["low_trigger_nano"],
            critical_nano=row["critical_trigger_nano"],
            termination_nano=row["termination_trigger_nano"],
        ),
        deposit_address=row["deposit_address"],
        deposit_chain_id=row["deposit_chain_id"],
        deposit_token=row["deposit_token"],
        resource=row["resource"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        grace_until=row["grace_until"],
    )
