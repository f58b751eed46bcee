"""Provisioning in Postgres: the resource.* work queue, resources, the step log, one-time credentials.

The queue is the ``outbox`` table (kinds ``resource.provision|suspend|resume|delete``), claimed
the way the notification dispatcher claims its rows (``FOR UPDATE SKIP LOCKED``, the attempt
counted and ``next_attempt_at`` pushed one lease ahead, settling fenced by the claim's attempt
count), with one difference: order is kept per purchase **across** the resource kinds, so a
resume never runs before an earlier suspend of the same purchase has finished.

Each method is one statement unless it says otherwise; ``complete`` is meant to run in a
transaction (it updates the resource, settles the row and may add an OfficeX refresh row).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from billing.adapters.postgres.outbox_queue import (
    DELIVERED,
    RELEASED,
    RETRY_LATER,
    SKIPPED,
    claim_cte,
    settle,
)
from billing.domain.catalog import OfferKind
from billing.domain.notifications import clip_error
from billing.domain.provisioning import (
    LeaseLost,
    PurchaseFacts,
    ResourceAction,
    ResourceJob,
    ResourceRecord,
    ResourceStatus,
    StatementRows,
    StatementTotals,
    action_of_kind,
)
from billing.domain.purchase import PurchaseStatus

_CLAIM = (
    claim_cte(
        in_order_with="e.kind LIKE 'resource.%%'",  # across the resource kinds (module docstring)
        also_where="""
              AND c.purchase_id IS NOT NULL
              AND (%(purchase_id)s::uuid IS NULL OR c.purchase_id = %(purchase_id)s::uuid)""",
    )
    + """
SELECT * FROM claimed ORDER BY next_attempt_at, id
"""
)

# The same shape as the status trigger's payload (migration 0007), from == to: OfficeX gets the
# record refreshed (resource, balance) without a transition. Only for a complete OfficeX org.
_OFFICEX_REFRESH = """
INSERT INTO outbox (purchase_id, kind, dedupe_key, payload)
SELECT p.id, 'officex.status', %(dedupe_key)s, jsonb_build_object(
           'event', %(event)s::text,
           'purchase_id', p.id,
           'offer_id', p.offer_id,
           'from', p.status,
           'to', p.status,
           'transition', p.status_version,
           'balance_nano', p.balance_nano,
           'held_nano', p.held_nano,
           'triggers', jsonb_build_object('low_nano', p.low_trigger_nano,
                                          'critical_nano', p.critical_trigger_nano,
                                          'termination_nano', p.termination_trigger_nano),
           'grace_until', p.grace_until,
           'occurred_at', now())
  FROM purchases p
 WHERE p.id = %(purchase_id)s
   AND p.customer_org_endpoint IS NOT NULL AND p.customer_org_id IS NOT NULL
   AND p.officex_purchase_id IS NOT NULL AND p.customer_org_api_key_ciphertext IS NOT NULL
ON CONFLICT (dedupe_key) DO NOTHING
"""

_RESOURCE_COLUMNS = """id, purchase_id, kind, name, region, status, summary, credentials_ciphertext,
       credentials_shown_at, last_error, created_at, updated_at, deleted_at"""


def _record(row: dict[str, Any]) -> ResourceRecord:
    ciphertext = row["credentials_ciphertext"]
    return ResourceRecord(
        id=row["id"],
        purchase_id=row["purchase_id"],
        kind=OfferKind(row["kind"]),
        name=row["name"],
        region=row["region"],
        status=ResourceStatus(row["status"]),
        summary=dict(row["summary"] or {}),
        credentials_ciphertext=None if ciphertext is None else bytes(ciphertext),
        credentials_shown_at=row["credentials_shown_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
    )


def _job(row: dict[str, Any]) -> ResourceJob:
    return ResourceJob(
        id=row["id"],
        purchase_id=row["purchase_id"],
        action=action_of_kind(row["kind"]),
        dedupe_key=row["dedupe_key"],
        payload=dict(row["payload"] or {}),
        attempts=row["attempts"],
        created_at=row["created_at"],
    )


class PostgresProvisioningStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    # ------------------------------------------------------------ the queue
    def enqueue(self, purchase_id: UUID, kind: str, dedupe_key: str, payload: dict[str, Any]) -> bool:
        """Add an outbox row once per ``dedupe_key``; False if it was there already."""
        inserted = self._connection.execute(
            """INSERT INTO outbox (purchase_id, kind, dedupe_key, payload) VALUES (%s, %s, %s, %s)
               ON CONFLICT (dedupe_key) DO NOTHING""",
            (purchase_id, kind, dedupe_key, Jsonb(payload)),
        ).rowcount
        return inserted == 1

    def enqueue_officex_refresh(self, purchase_id: UUID, event: str, dedupe_key: str) -> bool:
        """An ``officex.status`` row with the purchase as it is now, if its OfficeX org is complete."""
        params = {"purchase_id": purchase_id, "event": event, "dedupe_key": dedupe_key}
        return self._connection.execute(_OFFICEX_REFRESH, params).rowcount == 1

    def claim_jobs(
        self, kinds: Sequence[str], limit: int, lease: timedelta, purchase_id: UUID | None = None
    ) -> list[ResourceJob]:
        params = {"kinds": list(kinds), "limit": limit, "lease": lease, "purchase_id": purchase_id}
        with self._connection.cursor(row_factory=dict_row) as cursor:
            return [_job(row) for row in cursor.execute(_CLAIM, params).fetchall()]

    def settle_skipped(self, job: ResourceJob, reason: str) -> bool:
        return self._settle(SKIPPED, (clip_error(f"skipped: {reason}"),), job)

    def reschedule(
        self, job: ResourceJob, delay: timedelta, error: str, *, count_attempt: bool = True
    ) -> bool:
        """Due again after ``delay``; a postponement (``count_attempt=False``) gives the attempt back."""
        uncount = "" if count_attempt else ", attempts = attempts - 1"
        return self._settle(f"{RETRY_LATER}{uncount}", (delay, clip_error(error)), job)

    def release(self, job: ResourceJob) -> bool:
        """Give a claimed row back untried (the run is out of time)."""
        return self._settle(RELEASED, (), job)

    def _settle(self, update: str, values: tuple[Any, ...], job: ResourceJob) -> bool:
        return settle(self._connection, update, values, job.id, job.attempts)

    # ------------------------------------------------------------ purchases
    def purchase_facts(self, purchase_id: UUID) -> PurchaseFacts | None:
        row = self._connection.execute(
            """SELECT id, offer_id, status, balance_nano, held_nano, created_at, terminated_at,
                      notify_email IS NOT NULL, webhook_url IS NOT NULL
                 FROM purchases WHERE id = %s""",
            (purchase_id,),
        ).fetchone()
        if row is None:
            return None
        return PurchaseFacts(
            id=row[0],
            offer_id=row[1],
            status=PurchaseStatus(row[2]),
            balance_nano=row[3],
            held_nano=row[4],
            created_at=row[5],
            terminated_at=row[6],
            has_email=row[7],
            has_webhook=row[8],
        )

    def rescue_pending(self, purchase_id: UUID) -> bool:
        """Deposits seen but not yet credited would lift the purchase out of suspension."""
        row = self._connection.execute("SELECT purchase_rescue_pending(%s)", (purchase_id,)).fetchone()
        return bool(row and row[0])

    def statement_totals(self, purchase_id: UUID) -> StatementTotals:
        row = self._connection.execute(
            """SELECT COALESCE(sum(amount_nano) FILTER (WHERE kind = 'deposit'), 0),
                      COALESCE(-sum(amount_nano) FILTER (WHERE kind IN ('usage', 'estimate')), 0),
                      COALESCE(sum(amount_nano) FILTER (WHERE kind IN ('adjustment', 'reversal')), 0),
                      count(*) FILTER (WHERE kind IN ('usage', 'estimate'))
                 FROM ledger_entries WHERE purchase_id = %s""",
            (purchase_id,),
        ).fetchone()
        assert row is not None
        return StatementTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def statement_rows(self, purchase_id: UUID, dedupe_prefix: str) -> StatementRows:
        row = self._connection.execute(
            """SELECT count(*), count(*) FILTER (WHERE delivered_at IS NULL), min(created_at)
                 FROM outbox WHERE purchase_id = %s AND starts_with(dedupe_key, %s)""",
            (purchase_id, dedupe_prefix),
        ).fetchone()
        assert row is not None
        return StatementRows(int(row[0]), int(row[1]), row[2])

    # ------------------------------------------------------------ resources
    def resource(self, purchase_id: UUID, kind: OfferKind | None = None) -> ResourceRecord | None:
        """The purchase's resource (of ``kind``, or its first one)."""
        with self._connection.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(
                f"""SELECT {_RESOURCE_COLUMNS} FROM provisioned_resources
                     WHERE purchase_id = %s AND (%s::text IS NULL OR kind = %s::text)
                     ORDER BY created_at LIMIT 1""",
                (purchase_id, None if kind is None else kind.value, None if kind is None else kind.value),
            ).fetchone()
        return None if row is None else _record(row)

    def ensure_resource(
        self, purchase_id: UUID, kind: OfferKind, name: str, region: str | None
    ) -> ResourceRecord:
        """The purchase's resource of ``kind``, inserted (status provisioning) the first time.

        The name and region stored the first time win: a rerun never renames a resource.
        """
        self._connection.execute(
            """INSERT INTO provisioned_resources (purchase_id, kind, name, region)
               VALUES (%s, %s, %s, %s) ON CONFLICT (purchase_id, kind) DO NOTHING""",
            (purchase_id, kind.value, name, region),
        )
        record = self.resource(purchase_id, kind)
        assert record is not None
        return record

    def note_error(self, purchase_id: UUID, action: ResourceAction, error: str) -> None:
        """Show the last failure on the purchase's resource (if it has one yet)."""
        self._connection.execute(
            """UPDATE provisioned_resources SET last_action = %s, last_error = %s, last_error_at = now()
                WHERE purchase_id = %s AND status <> 'deleted'""",
            (action.value, clip_error(error), purchase_id),
        )

    def complete(
        self,
        job: ResourceJob,
        resource_id: UUID,
        status: ResourceStatus,
        *,
        summary: dict[str, Any] | None = None,
        credentials_ciphertext: bytes | None = None,
    ) -> None:
        """Record the finished action and settle its row (run this in a transaction).

        Raises ``LeaseLost`` if the row is no longer this claim's (the caller's transaction
        then rolls back, and the newer claim redoes the action idempotently).
        """
        if not self._settle(DELIVERED, (), job):
            raise LeaseLost(f"outbox row {job.id} was claimed again")
        deleted = status is ResourceStatus.DELETED
        self._connection.execute(
            """UPDATE provisioned_resources
                  SET status = %(status)s,
                      summary = COALESCE(%(summary)s, summary),
                      credentials_ciphertext = CASE WHEN %(deleted)s THEN NULL
                                                    ELSE COALESCE(%(ciphertext)s, credentials_ciphertext) END,
                      credentials_issued_at = CASE WHEN %(ciphertext)s::bytea IS NULL
                                                   THEN credentials_issued_at ELSE now() END,
                      credentials_shown_at = CASE WHEN %(ciphertext)s::bytea IS NULL
                                                  THEN credentials_shown_at END,
                      deleted_at = CASE WHEN %(deleted)s THEN COALESCE(deleted_at, now()) END,
                      last_action = %(action)s, last_error = NULL, last_error_at = NULL, updated_at = now()
                WHERE id = %(id)s""",
            {
                "status": status.value,
                "summary": None if summary is None else Jsonb(summary),
                "deleted": deleted,
                "ciphertext": credentials_ciphertext,
                "action": job.action.value,
                "id": resource_id,
            },
        )

    # ------------------------------------------------------------- step log
    def steps(self, resource_id: UUID, action: ResourceAction, run: int) -> dict[str, dict[str, Any]]:
        rows = self._connection.execute(
            """SELECT step, outcome FROM provisioning_steps
                WHERE resource_id = %s AND action = %s AND run = %s""",
            (resource_id, action.value, run),
        ).fetchall()
        return {step: dict(outcome) for step, outcome in rows}

    def record_step(
        self, resource_id: UUID, action: ResourceAction, run: int, step: str, outcome: dict[str, Any]
    ) -> None:
        self._connection.execute(
            """INSERT INTO provisioning_steps (resource_id, action, run, step, outcome)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (resource_id, action.value, run, step, Jsonb(outcome)),
        )

    # ---------------------------------------------------- one-time credentials
    def take_credentials(self, resource_id: UUID, ciphertext: bytes) -> bool:
        """Wipe the credentials if they are still ``ciphertext``; True for exactly one caller."""
        return (
            self._connection.execute(
                """UPDATE provisioned_resources
                      SET credentials_ciphertext = NULL, credentials_shown_at = now(), updated_at = now()
                    WHERE id = %s AND credentials_ciphertext = %s""",
                (resource_id, ciphertext),
            ).rowcount
            == 1
        )

    def store_finalize_replay(self, wallet_id: UUID, idempotency_key: str, ciphertext: bytes) -> None:
        """Replace a finalize replay's answer (once it carries the resource's credentials)."""
        self._connection.execute(
            """UPDATE finalize_replays SET response_ciphertext = %s
                WHERE wallet_id = %s AND idempotency_key = %s""",
            (ciphertext, wallet_id, idempotency_key),
        )
