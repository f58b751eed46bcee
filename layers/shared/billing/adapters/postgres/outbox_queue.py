"""The outbox as a work queue, shared by the notification dispatcher and the provisioner.

A claim takes due rows with ``FOR UPDATE SKIP LOCKED``, counts the attempt and pushes
``next_attempt_at`` one lease ahead: a concurrent worker neither waits nor takes the same row,
and a worker that dies leaves its rows due again after the lease. A row waits while an older
undelivered row of the same purchase and *order scope* exists. Settling applies only while the
row still carries the claim's ``attempts`` (a fencing token): a late worker whose lease ran out
cannot undo a newer claim's outcome.
"""

from __future__ import annotations

from typing import Any

import psycopg


def claim_cte(*, in_order_with: str, also_where: str = "") -> str:
    """``WITH claimed AS (…)``: up to ``%(limit)s`` due rows of ``%(kinds)s``, leased for ``%(lease)s``.

    ``in_order_with`` says which older rows of the same purchase a row waits for (a condition
    on ``e``, the older row, and ``c``, the candidate); ``also_where`` adds conditions on ``c``.
    """
    return f"""
WITH claimed AS (
    UPDATE outbox o
       SET attempts = o.attempts + 1,
           next_attempt_at = now() + %(lease)s
     WHERE o.id IN (
           SELECT c.id
             FROM outbox c
            WHERE c.delivered_at IS NULL
              AND c.kind = ANY(%(kinds)s)
              AND c.next_attempt_at <= now(){also_where}
              AND NOT EXISTS (SELECT 1 FROM outbox e
                               WHERE e.purchase_id = c.purchase_id AND {in_order_with}
                                 AND e.delivered_at IS NULL AND e.id < c.id)
            ORDER BY c.next_attempt_at, c.id
            LIMIT %(limit)s
              FOR UPDATE SKIP LOCKED)
    RETURNING o.id, o.purchase_id, o.kind, o.dedupe_key, o.payload, o.attempts, o.created_at,
              o.next_attempt_at
)
"""


DELIVERED = "UPDATE outbox SET delivered_at = now(), last_error = NULL"
SKIPPED = "UPDATE outbox SET delivered_at = now(), last_error = %s"  # the reason
RETRY_LATER = "UPDATE outbox SET next_attempt_at = now() + %s, last_error = %s"  # delay, error
RELEASED = "UPDATE outbox SET next_attempt_at = now(), attempts = attempts - 1"  # untried: not counted


def settle(
    connection: psycopg.Connection[Any], update: str, values: tuple[Any, ...], row_id: int, attempts: int
) -> bool:
    """Apply ``update`` if the row is still this claim's and undelivered; whether it was."""
    statement = f"{update} WHERE id = %s AND attempts = %s AND delivered_at IS NULL"
    return connection.execute(statement, (*values, row_id, attempts)).rowcount == 1
