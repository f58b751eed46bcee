"""The outbox in Postgres: claim due rows under a lease, then settle each one.

Every method is one statement (autocommit, no transaction held while delivering):

- ``claim_due`` leases due rows (``outbox_queue``). Rows of one purchase and kind go out in
  order: a row waits while an older one of the same purchase and kind is undelivered (an old
  OfficeX status never lands after a newer one). The purchase's delivery settings are read in
  the same statement (never copied into the outbox).
- ``mark_delivered`` / ``mark_skipped`` / ``reschedule`` / ``release`` are fenced by the
  claim's ``attempts`` (``outbox_queue.settle``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing.adapters.postgres.outbox_queue import (
    DELIVERED,
    RELEASED,
    RETRY_LATER,
    SKIPPED,
    claim_cte,
    settle,
)
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.notifications import Destinations, OutboxMessage, clip_error

_CLAIM = (
    claim_cte(in_order_with="e.kind = c.kind")
    + """
SELECT c.id, c.purchase_id, c.kind, c.dedupe_key, c.payload, c.attempts, c.created_at,
       p.id IS NOT NULL AS purchase_found, p.notify_email, p.webhook_url, p.webhook_secret_ciphertext,
       p.customer_org_endpoint, p.customer_org_id, p.officex_purchase_id, p.customer_org_api_key_ciphertext,
       -- for the OfficeX record (pricing line, vendor notes); see billing.domain.notifications.officex_record
       f.title AS offer_title, f.pricing AS offer_pricing,
       w.address AS deposit_address, w.chain_id AS deposit_chain_id, w.token AS deposit_token,
       r.kind AS resource_kind, r.name AS resource_name, r.region AS resource_region,
       r.status AS resource_status, r.summary AS resource_summary
  FROM claimed c
  LEFT JOIN purchases p ON p.id = c.purchase_id
  LEFT JOIN offers f ON f.id = p.offer_id
  LEFT JOIN checkout_wallets w ON w.id = p.wallet_id
  LEFT JOIN LATERAL (SELECT * FROM provisioned_resources pr WHERE pr.purchase_id = p.id
                      ORDER BY pr.created_at LIMIT 1) r ON true
 ORDER BY c.next_attempt_at, c.id
"""
)


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _resource(row: dict[str, Any]) -> dict[str, Any] | None:
    if row.get("resource_name") is None:
        return None
    return {
        **(row.get("resource_summary") or {}),
        "kind": row["resource_kind"],
        "name": row["resource_name"],
        "region": row["resource_region"],
        "status": row["resource_status"],
    }


def _message(row: dict[str, Any]) -> OutboxMessage:
    destinations = None
    if row["purchase_found"]:
        destinations = Destinations(
            notify_email=row["notify_email"],
            webhook_url=row["webhook_url"],
            webhook_secret_ciphertext=_bytes(row["webhook_secret_ciphertext"]),
            customer_org_endpoint=row["customer_org_endpoint"],
            customer_org_id=row["customer_org_id"],
            officex_purchase_id=row["officex_purchase_id"],
            customer_org_api_key_ciphertext=_bytes(row["customer_org_api_key_ciphertext"]),
            offer_title=row.get("offer_title"),
            offer_pricing=row.get("offer_pricing"),
            deposit_address=row.get("deposit_address"),
            deposit_chain_id=row.get("deposit_chain_id"),
            deposit_token=row.get("deposit_token"),
            resource=_resource(row),
        )
    return OutboxMessage(
        id=row["id"],
        kind=row["kind"],
        dedupe_key=row["dedupe_key"],
        purchase_id=row["purchase_id"],
        payload=dict(row["payload"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        destinations=destinations,
    )


class PostgresOutbox:
    """``Outbox`` on the shared connection; each call is one autocommit statement."""

    def __init__(self, transactions: PostgresTransactions | None = None) -> None:
        self._transactions = transactions or PostgresTransactions()

    def claim_due(self, kinds: Sequence[str], limit: int, lease: timedelta) -> list[OutboxMessage]:
        def claim(connection: psycopg.Connection[Any]) -> list[OutboxMessage]:
            with connection.cursor(row_factory=dict_row) as cursor:
                rows = cursor.execute(
                    _CLAIM, {"kinds": list(kinds), "limit": limit, "lease": lease}
                ).fetchall()
            return [_message(row) for row in rows]

        return self._transactions.run_single_write(lambda unit: claim(unit.connection))

    def mark_delivered(self, message: OutboxMessage) -> bool:
        return self._settle(DELIVERED, (), message)

    def mark_skipped(self, message: OutboxMessage, reason: str) -> bool:
        """Settled without sending (the purchase no longer has this channel); the reason stays on the row."""
        return self._settle(SKIPPED, (clip_error(f"skipped: {reason}"),), message)

    def reschedule(self, message: OutboxMessage, delay: timedelta, error: str) -> bool:
        return self._settle(RETRY_LATER, (delay, clip_error(error)), message)

    def release(self, message: OutboxMessage) -> bool:
        """Give a claimed row back untried (the run is out of time): due now, the attempt uncounted."""
        return self._settle(RELEASED, (), message)

    def _settle(self, update: str, values: tuple[Any, ...], message: OutboxMessage) -> bool:
        return self._transactions.run_single_write(
            lambda unit: settle(unit.connection, update, values, message.id, message.attempts)
        )
