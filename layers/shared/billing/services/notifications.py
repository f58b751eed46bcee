"""The outbox dispatcher: delivers status-change notifications, retrying with backoff, never dropping.

Metering and every other balance change only insert outbox rows (a DB trigger, same
transaction); this runs on its own schedule, so a slow or dead receiver can never slow
a meter-usage call. Delivery is at least once: a receiver may see a message twice (a
crash between sending and recording), never zero times. Webhook receivers dedupe on ``id``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from billing.domain.errors import CiphertextMismatch, DependencyUnavailable
from billing.domain.notifications import (
    DISPATCHED_KINDS,
    SIGNATURE_HEADER,
    DeliveryFailed,
    Destinations,
    EmailMessage,
    FinalStatement,
    OutboxKind,
    OutboxMessage,
    RetryPolicy,
    StatusChanged,
    final_statement_body,
    final_statement_email,
    is_final_statement,
    officex_key_context,
    officex_record,
    officex_update_body,
    officex_update_url,
    sign_webhook,
    status_email,
    webhook_body,
    webhook_secret_context,
)
from billing.services.leased_batches import handle_due_batches
from billing.services.ports import EmailSender, HttpPoster, Outbox, SecretBox

logger = Logger(child=True)


class OutboxDispatchInput(BaseModel):
    """The schedule's input (``{}``); an operator may restrict a run to some kinds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: list[OutboxKind] = Field(default_factory=lambda: list(DISPATCHED_KINDS), min_length=1)


class _Skip(Exception):
    """Nothing to deliver to: the purchase no longer has this channel."""


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int = 25
    lease: timedelta = timedelta(minutes=5)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Stop claiming (and give claimed rows back) when less time than this is left in the run.
    reserve: timedelta = timedelta(seconds=30)


@dataclass(frozen=True)
class OfficexRecordLinks:
    """Lets OfficeX updates carry the pricing line, vendor notes and links (not only the status)."""

    public_base_url: str
    docs_url: str | None = None


@dataclass
class DispatchOutcome:
    delivered: int = 0
    retried: int = 0
    skipped: int = 0
    #: Failures at or past ``RetryPolicy.stuck_after_attempts`` (each also counted in ``retried``).
    stuck: int = 0
    released: int = 0

    def as_metrics(self) -> dict[str, int]:
        return {
            "OutboxDelivered": self.delivered,
            "OutboxRetried": self.retried,
            "OutboxSkipped": self.skipped,
            "OutboxDeliveryStuck": self.stuck,
        }


class _Unconfigured:
    """Stands in for a channel whose settings are missing: every send fails (and is retried)."""

    def __init__(self, what: str) -> None:
        self._what = what

    def send(self, to: str, message: object) -> None:
        raise DeliveryFailed(f"{self._what} is not configured")


class OutboxDispatcher:
    def __init__(
        self,
        outbox: Outbox,
        *,
        email: Callable[[], EmailSender],
        http: HttpPoster,
        secrets: Callable[[], SecretBox],
        policy: DispatchPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = random.random,
        officex_links: OfficexRecordLinks | None = None,
    ) -> None:
        self._officex_links = officex_links
        self._outbox = outbox
        self._email = email
        self._http = http
        self._secrets = secrets
        self._policy = policy or DispatchPolicy()
        self._clock = clock
        self._jitter = jitter

    def run(
        self,
        *,
        time_left: Callable[[], timedelta],
        kinds: Sequence[OutboxKind] = DISPATCHED_KINDS,
    ) -> DispatchOutcome:
        """Deliver due rows batch by batch until none is due or the run's time is nearly up.

        A batch that delivered something is followed by another claim: rows waiting behind
        the ones just delivered (same purchase and kind, newer transition) are due now.
        """
        outcome = DispatchOutcome()
        policy = self._policy
        kind_values = [kind.value for kind in kinds]
        outcome.released = handle_due_batches(
            claim=lambda: self._outbox.claim_due(kind_values, policy.batch_size, policy.lease),
            handle=lambda message: self._dispatch(message, outcome),
            release=self._outbox.release,
            settled=lambda: outcome.delivered + outcome.skipped,  # failures wait for their backoff
            time_left=time_left,
            reserve=policy.reserve,
        )
        return outcome

    # --------------------------------------------------------------- one row
    def _dispatch(self, message: OutboxMessage, outcome: DispatchOutcome) -> None:
        secrets: list[str] = []  # plaintexts used for this row: never written to last_error
        log = {"outbox_id": message.id, "kind": message.kind, "attempts": message.attempts}
        try:
            self._deliver(message, secrets)
        except _Skip as skip:
            if self._outbox.mark_skipped(message, str(skip)):
                outcome.skipped += 1
                logger.warning("outbox row skipped", extra={**log, "reason": str(skip)})
            return
        except (DeliveryFailed, DependencyUnavailable) as failure:
            reason = failure.reason if isinstance(failure, DeliveryFailed) else failure.detail
        except CiphertextMismatch:
            reason = "a stored secret does not decrypt under its purchase's encryption context"
        except ValidationError as invalid:
            reason = f"malformed payload ({invalid.error_count()} errors)"
        except Exception as unexpected:  # one bad row must not stop the others
            logger.exception("outbox delivery raised", extra=log)
            reason = f"unexpected {type(unexpected).__name__}"
        else:
            if self._outbox.mark_delivered(message):
                outcome.delivered += 1
                logger.info("outbox row delivered", extra=log)
            return
        self._retry_later(message, _redact(reason, secrets), outcome, log)

    def _retry_later(
        self, message: OutboxMessage, reason: str, outcome: DispatchOutcome, log: dict[str, object]
    ) -> None:
        retry = self._policy.retry
        delay = retry.delay(message.attempts, self._jitter())
        if not self._outbox.reschedule(message, delay, reason):
            return
        outcome.retried += 1
        details = {**log, "reason": reason, "retry_in_s": round(delay.total_seconds())}
        if retry.is_stuck(message.attempts):
            outcome.stuck += 1
            logger.error("outbox delivery stuck", extra={**details, "dedupe_key": message.dedupe_key})
        else:
            logger.info("outbox delivery failed; will retry", extra=details)

    def _deliver(self, message: OutboxMessage, secrets: list[str]) -> None:
        if is_final_statement(message.payload):
            self._deliver_final_statement(message, secrets)
            return
        event = StatusChanged.model_validate(message.payload)
        where = message.destinations
        if where is None or message.purchase_id is None:
            raise _Skip("the purchase no longer exists")
        kind = OutboxKind(message.kind)
        if kind is OutboxKind.NOTIFY_EMAIL:
            self._send_email(where, status_email(event))
        elif kind is OutboxKind.NOTIFY_WEBHOOK:
            self._send_webhook(message.purchase_id, where, webhook_body(message.dedupe_key, event), secrets)
        else:
            endpoint, org_id = where.customer_org_endpoint, where.customer_org_id
            ciphertext, officex_id = where.customer_org_api_key_ciphertext, where.officex_purchase_id
            if not endpoint or not org_id or not officex_id or ciphertext is None:
                raise _Skip("the purchase has no complete OfficeX org (endpoint, org id, purchase id, key)")
            org_key = self._secrets().decrypt(ciphertext, officex_key_context(message.purchase_id))
            secrets.append(org_key)
            links = self._officex_links
            record = None
            if links is not None:
                record = officex_record(
                    event, where, public_base_url=links.public_base_url, docs_url=links.docs_url
                )
            self._http.post_json(
                officex_update_url(endpoint, org_id),
                officex_update_body(officex_id, event.to_status, record),
                {"Authorization": f"Bearer {org_key}"},
            )

    def _deliver_final_statement(self, message: OutboxMessage, secrets: list[str]) -> None:
        """A terminated purchase's last statement (written by provisioning before deletion)."""
        statement = FinalStatement.model_validate(message.payload)
        where = message.destinations
        if where is None or message.purchase_id is None:
            raise _Skip("the purchase no longer exists")
        kind = OutboxKind(message.kind)
        if kind is OutboxKind.NOTIFY_EMAIL:
            self._send_email(where, final_statement_email(statement))
        elif kind is OutboxKind.NOTIFY_WEBHOOK:
            body = final_statement_body(message.dedupe_key, statement)
            self._send_webhook(message.purchase_id, where, body, secrets)
        else:
            raise _Skip("final statements go by email and webhook only")

    def _send_email(self, where: Destinations, email: EmailMessage) -> None:
        if not where.notify_email:
            raise _Skip("the purchase has no notification email")
        self._email().send(where.notify_email, email)

    def _send_webhook(self, purchase_id: UUID, where: Destinations, body: bytes, secrets: list[str]) -> None:
        """POST ``body`` signed with the purchase's webhook secret (docs/notifications.md)."""
        if not where.webhook_url or where.webhook_secret_ciphertext is None:
            raise _Skip("the purchase has no webhook")
        secret = self._secrets().decrypt(where.webhook_secret_ciphertext, webhook_secret_context(purchase_id))
        secrets.append(secret)
        signature = sign_webhook(secret, body, int(self._clock().timestamp()))
        self._http.post_json(where.webhook_url, body, {SIGNATURE_HEADER: signature})


def unconfigured_email(what: str) -> EmailSender:
    return _Unconfigured(what)


def _redact(reason: str, secrets: list[str]) -> str:
    """A receiver may echo our headers back in its error body: never store a secret that way."""
    for secret in secrets:
        if secret:
            reason = reason.replace(secret, "[redacted]")
    return reason
