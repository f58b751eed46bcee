"""Provisioning: the worker that runs ``resource.*`` outbox rows, and the one-time credentials handoff.

The work queue is the outbox. Finalize writes ``resource.provision`` (same transaction as the
purchase); the status trigger writes ``resource.suspend`` / ``resume`` / ``delete`` with every
transition. The worker claims them like the notification dispatcher claims its rows (leased,
``SKIP LOCKED``, backoff, never given up) but keeps them in order **per purchase across kinds**,
so an action never overtakes an earlier one of the same purchase.

An action runs its provisioner's steps against a step log bound to (resource, action, outbox
row): a crash anywhere leaves the row claimed until its lease ends, and the rerun skips the
recorded steps. The end of an action — resource status, summary, encrypted credentials and
the row settled — is one transaction.

Termination safety, before ``delete`` touches anything:
1. a top-up seen on the purchase's deposit address that would lift it out of suspension once
   it confirms postpones deletion (re-checked every few minutes, never given up);
2. the final usage statement is written (email and webhook rows, once) and deletion waits until
   they are delivered (or skipped), at most ``statement_wait``.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict

from billing.domain.catalog import OfferKind
from billing.domain.errors import CiphertextMismatch, DependencyUnavailable
from billing.domain.notifications import FINAL_STATEMENT_EVENT, FinalStatement, RetryPolicy, iso_utc
from billing.domain.provisioning import (
    RESOURCE_KINDS,
    STATUS_AFTER,
    LeaseLost,
    Provisioned,
    ProvisioningFailed,
    ProvisioningIncomplete,
    PurchaseFacts,
    ResourceAction,
    ResourceJob,
    ResourceProvisioner,
    ResourceRecord,
    ResourceStatus,
    credentials_context,
    resource_view,
)
from billing.domain.purchase import PurchaseStatus
from billing.services.leased_batches import handle_due_batches
from billing.services.ports import SecretBox, Transactions, UnitOfWork

logger = Logger(child=True)

RESOURCE_CHANGED_EVENT = "purchase.resource_changed"


def final_statement_key(purchase_id: UUID, channel: str) -> str:
    return f"final-statement:{purchase_id}:{channel}"


@dataclass(frozen=True)
class ProvisioningPolicy:
    batch_size: int = 10
    #: A claimed row is due again after this long if its worker died (longer than the function runs).
    lease: timedelta = timedelta(minutes=10)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Stop claiming (and give claimed rows back) when less time than this is left in the run.
    reserve: timedelta = timedelta(seconds=60)
    #: How often a postponed deletion looks again at the pending top-up.
    rescue_recheck: timedelta = timedelta(minutes=5)
    #: Deletion waits for the final statement's delivery at most this long (then deletes anyway:
    #: a receiver that is down must not keep a terminated customer's resources running forever).
    statement_wait: timedelta = timedelta(hours=1)
    statement_poll: timedelta = timedelta(minutes=1)


@dataclass
class ProvisioningOutcome:
    done: int = 0
    skipped: int = 0
    retried: int = 0
    #: Deletions waiting for a pending top-up or the final statement (not failures).
    postponed: int = 0
    #: Actions that made progress and continue later (a big bucket being emptied).
    continuing: int = 0
    stuck: int = 0
    released: int = 0
    lost_leases: int = 0

    def as_metrics(self) -> dict[str, int]:
        return {
            "ResourceActionsDone": self.done,
            "ResourceActionsSkipped": self.skipped,
            "ResourceActionsRetried": self.retried,
            "ResourceActionsPostponed": self.postponed,
            "ResourceActionsContinuing": self.continuing,
            "ResourceActionsStuck": self.stuck,
        }


class ProvisionerInput(BaseModel):
    """The provisioner function's input: ``{}`` (schedule) or ``{"purchase_id": …}`` (finalize)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purchase_id: UUID | None = None


class _Postponed(Exception):
    def __init__(self, reason: str, delay: timedelta) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class _Skip(Exception):
    """Nothing to do for this row (settled with the reason, kept for operators)."""


class PostgresBackedStepLog:
    """``StepLog`` for one run of one action: outcomes read once, each record committed at once."""

    def __init__(
        self, transactions: Transactions, resource_id: UUID, action: ResourceAction, run: int
    ) -> None:
        self._transactions = transactions
        self._resource_id = resource_id
        self._action = action
        self._run = run
        self._outcomes: dict[str, dict[str, Any]] | None = None

    def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._outcomes is None:
            self._outcomes = self._transactions.run(
                lambda unit: unit.provisioning.steps(self._resource_id, self._action, self._run)
            )
        return self._outcomes

    def outcome(self, step: str) -> dict[str, Any] | None:
        return self._loaded().get(step)

    def record(self, step: str, outcome: dict[str, Any]) -> None:
        self._transactions.run_single_write(
            lambda unit: unit.provisioning.record_step(
                self._resource_id, self._action, self._run, step, outcome
            )
        )
        self._loaded()[step] = dict(outcome)


@dataclass(frozen=True)
class _Context:
    facts: PurchaseFacts
    record: ResourceRecord | None


class ProvisioningWorker:
    def __init__(
        self,
        transactions: Transactions,
        *,
        provisioners: Mapping[OfferKind, ResourceProvisioner],
        secrets: Callable[[], SecretBox],
        policy: ProvisioningPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._transactions = transactions
        self._provisioners = dict(provisioners)
        self._secrets = secrets
        self._policy = policy or ProvisioningPolicy()
        self._clock = clock
        self._jitter = jitter

    def run(
        self, *, time_left: Callable[[], timedelta], purchase_id: UUID | None = None
    ) -> ProvisioningOutcome:
        """Perform due actions batch by batch until none is due or the run's time is nearly up.

        ``purchase_id`` limits the run to one purchase (finalize asks for its new purchase).
        """
        outcome = ProvisioningOutcome()
        policy = self._policy
        outcome.released = handle_due_batches(
            claim=lambda: self._transactions.run_single_write(
                lambda unit: unit.provisioning.claim_jobs(
                    RESOURCE_KINDS, policy.batch_size, policy.lease, purchase_id
                )
            ),
            handle=lambda job: self._perform(job, outcome),
            release=self._release,
            settled=lambda: outcome.done + outcome.skipped,  # postponed and retried rows wait their time
            time_left=time_left,
            reserve=policy.reserve,
        )
        return outcome

    # --------------------------------------------------------------- one job
    def _perform(self, job: ResourceJob, outcome: ProvisioningOutcome) -> None:
        log = {"outbox_id": job.id, "purchase_id": str(job.purchase_id), "action": job.action.value}
        try:
            status = self._act(job, self._context(job.purchase_id))
        except _Skip as skip:
            why = str(skip)
            if self._transactions.run_single_write(lambda unit: unit.provisioning.settle_skipped(job, why)):
                outcome.skipped += 1
                logger.info("resource action skipped", extra={**log, "reason": why})
            return
        except _Postponed as postponed:
            self._reschedule(job, postponed.delay, f"postponed: {postponed.reason}", count_attempt=False)
            outcome.postponed += 1
            logger.info("resource action postponed", extra={**log, "reason": postponed.reason})
            return
        except ProvisioningIncomplete as incomplete:
            self._note_error(job, f"in progress: {incomplete.reason}")
            self._reschedule(
                job, incomplete.retry_after, f"in progress: {incomplete.reason}", count_attempt=False
            )
            outcome.continuing += 1
            logger.info("resource action continues later", extra={**log, "reason": incomplete.reason})
            return
        except LeaseLost:
            outcome.lost_leases += 1
            logger.warning("resource action finished after its lease; the newer claim decides", extra=log)
            return
        except (ProvisioningFailed, DependencyUnavailable) as failure:
            reason = str(failure) if isinstance(failure, ProvisioningFailed) else failure.detail
        except CiphertextMismatch:
            reason = "a stored secret does not decrypt under its encryption context"
        except Exception as unexpected:  # one bad row must not stop the others
            logger.exception("resource action raised", extra=log)
            reason = f"unexpected {type(unexpected).__name__}"
        else:
            outcome.done += 1
            logger.info("resource action done", extra={**log, "status": status.value})
            return
        self._note_error(job, reason)
        self._retry_later(job, reason, outcome, log)

    def _context(self, purchase_id: UUID) -> _Context:
        def read(unit: UnitOfWork) -> _Context | None:
            facts = unit.provisioning.purchase_facts(purchase_id)
            if facts is None:
                return None
            return _Context(facts, unit.provisioning.resource(purchase_id))

        context = self._transactions.run(read)
        if context is None:
            raise _Skip("the purchase no longer exists")
        return context

    def _provisioner(self, kind: OfferKind) -> ResourceProvisioner:
        provisioner = self._provisioners.get(kind)
        if provisioner is None:
            raise ProvisioningFailed(f"no provisioner for {kind.value} is configured in this deployment")
        return provisioner

    def _act(self, job: ResourceJob, context: _Context) -> ResourceStatus:
        """Perform ``job``; returns the status the resource ends in."""
        action, record = job.action, context.record
        if action is ResourceAction.PROVISION:
            return self._provision(job, context)
        nothing_provisioned = "no resource was provisioned for this purchase"
        if action is ResourceAction.DELETE:
            self._termination_safety(job, context.facts, record)
            nothing_provisioned += " (final statement sent)"
        if record is None:
            raise _Skip(nothing_provisioned)
        if record.status is ResourceStatus.DELETED:
            raise _Skip("the resource is already deleted")
        provisioner = self._provisioner(record.kind)
        steps = PostgresBackedStepLog(self._transactions, record.id, action, job.id)
        if action is ResourceAction.SUSPEND:
            provisioner.suspend(record.ref(), steps)
        elif action is ResourceAction.RESUME:
            provisioner.resume(record.ref(), steps)
        else:
            provisioner.delete(record.ref(), steps)
        return self._complete(job, record, None)

    def _provision(self, job: ResourceJob, context: _Context) -> ResourceStatus:
        facts, record = context.facts, context.record
        if record is not None and record.status is not ResourceStatus.PROVISIONING:
            raise _Skip(f"the resource is already provisioned ({record.status.value})")
        if facts.status is PurchaseStatus.TERMINATED:
            # Anything half-made stays recorded (status provisioning): the delete row cleans it up.
            raise _Skip("the purchase was terminated before its resource was provisioned")
        # Read only here: suspend, resume and delete never depend on the offer's current shape.
        offer = self._transactions.run(lambda unit: unit.catalog.offer(facts.offer_id))
        if offer is None:
            raise ProvisioningFailed(f"the purchase's offer {facts.offer_id!r} no longer exists")
        provisioner = self._provisioner(offer.kind)
        wanted = provisioner.resource_for(facts.id, offer)
        # Inserted before any cloud call, so a crash mid-way leaves a row the delete can find.
        record = self._transactions.run_single_write(
            lambda unit: unit.provisioning.ensure_resource(facts.id, offer.kind, wanted.name, wanted.region)
        )
        steps = PostgresBackedStepLog(self._transactions, record.id, job.action, job.id)
        provisioned = provisioner.provision(record.ref(wanted.tags), steps)
        return self._complete(job, record, provisioned)

    def _complete(
        self, job: ResourceJob, record: ResourceRecord, provisioned: Provisioned | None
    ) -> ResourceStatus:
        status = STATUS_AFTER[job.action]
        ciphertext = None
        if provisioned is not None and provisioned.credentials:
            # KMS before the transaction: no network call while rows are locked.
            ciphertext = self._secrets().encrypt(
                json.dumps(provisioned.credentials, sort_keys=True),
                credentials_context(record.purchase_id, record.id),
            )
        summary = None if provisioned is None else provisioned.summary

        def complete(unit: UnitOfWork) -> None:
            unit.provisioning.complete(
                job, record.id, status, summary=summary, credentials_ciphertext=ciphertext
            )
            if job.action in (ResourceAction.PROVISION, ResourceAction.DELETE):
                # The OfficeX record shows the resource; refresh it when it appears or goes.
                unit.provisioning.enqueue_officex_refresh(
                    record.purchase_id,
                    RESOURCE_CHANGED_EVENT,
                    f"resource:{record.id}:{job.id}:officex.status",
                )

        self._transactions.run(complete)
        return status

    # ---------------------------------------------------- termination safety
    def _termination_safety(
        self, job: ResourceJob, facts: PurchaseFacts, record: ResourceRecord | None
    ) -> None:
        policy = self._policy
        if self._transactions.run(lambda unit: unit.provisioning.rescue_pending(facts.id)):
            raise _Postponed(
                "a top-up that would restore the balance is waiting for confirmations", policy.rescue_recheck
            )
        prefix = final_statement_key(facts.id, "")
        rows = self._transactions.run(lambda unit: unit.provisioning.statement_rows(facts.id, prefix))
        if rows.total == 0 and (facts.has_email or facts.has_webhook):
            self._write_final_statement(job, facts, record)
            rows = self._transactions.run(lambda unit: unit.provisioning.statement_rows(facts.id, prefix))
        if rows.pending == 0:
            return
        waited = self._clock() - (rows.first_created_at or self._clock())
        if waited < policy.statement_wait:
            raise _Postponed("waiting for the final usage statement to be delivered", policy.statement_poll)
        logger.warning(
            "deleting before the final statement was delivered (waited long enough)",
            extra={"purchase_id": str(facts.id), "waited_s": round(waited.total_seconds())},
        )

    def _write_final_statement(
        self, job: ResourceJob, facts: PurchaseFacts, record: ResourceRecord | None
    ) -> None:
        now = self._clock()

        def write(unit: UnitOfWork) -> None:
            totals = unit.provisioning.statement_totals(facts.id)
            statement = FinalStatement(
                event=FINAL_STATEMENT_EVENT,
                purchase_id=facts.id,
                offer_id=facts.offer_id,
                opened_at=facts.created_at,
                closed_at=facts.terminated_at or now,
                deposits_nano=totals.deposits_nano,
                usage_nano=totals.usage_nano,
                adjustments_nano=totals.adjustments_nano,
                balance_nano=facts.balance_nano,
                held_nano=facts.held_nano,
                usage_events=totals.usage_events,
                resource=None if record is None else resource_view(record),
                issued_at=now,
            )
            payload = {
                **statement.model_dump(mode="json"),
                "opened_at": iso_utc(statement.opened_at),
                "closed_at": iso_utc(statement.closed_at),
                "issued_at": iso_utc(statement.issued_at),
            }
            channels = [("notify.email", facts.has_email), ("notify.webhook", facts.has_webhook)]
            for channel, wanted in channels:
                if wanted:
                    unit.provisioning.enqueue(
                        facts.id, channel, final_statement_key(facts.id, channel), payload
                    )
            if record is not None:
                unit.provisioning.record_step(
                    record.id,
                    job.action,
                    job.id,
                    "final_statement",
                    {"channels": [c for c, w in channels if w]},
                )

        self._transactions.run(write)

    # ------------------------------------------------------------- failures
    def _note_error(self, job: ResourceJob, reason: str) -> None:
        with contextlib.suppress(DependencyUnavailable):  # the outbox row keeps the reason too
            self._transactions.run_single_write(
                lambda unit: unit.provisioning.note_error(job.purchase_id, job.action, reason)
            )

    def _release(self, job: ResourceJob) -> bool:
        return self._transactions.run_single_write(lambda unit: unit.provisioning.release(job))

    def _reschedule(self, job: ResourceJob, delay: timedelta, reason: str, *, count_attempt: bool) -> bool:
        return self._transactions.run_single_write(
            lambda unit: unit.provisioning.reschedule(job, delay, reason, count_attempt=count_attempt)
        )

    def _retry_later(
        self, job: ResourceJob, reason: str, outcome: ProvisioningOutcome, log: dict[str, Any]
    ) -> None:
        retry = self._policy.retry
        delay = retry.delay(job.attempts, self._jitter())
        if not self._reschedule(job, delay, reason, count_attempt=True):
            return
        outcome.retried += 1
        details = {
            **log,
            "reason": reason,
            "attempts": job.attempts,
            "retry_in_s": round(delay.total_seconds()),
        }
        if retry.is_stuck(job.attempts):
            outcome.stuck += 1
            logger.error("resource action stuck", extra={**details, "dedupe_key": job.dedupe_key})
        else:
            logger.warning("resource action failed; will retry", extra=details)


# ------------------------------------------------------------------ handoff
@dataclass(frozen=True)
class ResourceDelivery:
    """A purchase's resource as the customer sees it, and its credentials if this call revealed them."""

    resource: dict[str, Any] | None
    credentials: dict[str, str] | None = None


class ProvisioningHandoff:
    """Shows a purchase's resource, and hands its credentials out exactly once.

    ``deliver(purchase_id, wait=…)`` (finalize) first asks the provisioner to start and waits up to
    ``wait`` for the resource to leave ``provisioning``; with ``wait=0`` (GET /purchase) it only
    reads. Credentials are decrypted and then wiped with a compare-and-set on the ciphertext:
    of any number of concurrent readers, exactly one gets them.
    """

    def __init__(
        self,
        transactions: Transactions,
        *,
        secrets: Callable[[], SecretBox] | None,
        kick: Callable[[UUID], None] | None = None,
        poll_interval: timedelta = timedelta(milliseconds=250),
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._transactions = transactions
        self._secrets = secrets
        self._kick = kick
        self._poll = poll_interval.total_seconds()
        self._monotonic = monotonic
        self._sleep = sleep

    def deliver(self, purchase_id: UUID, *, wait: timedelta = timedelta(0)) -> ResourceDelivery:
        waiting = wait.total_seconds() > 0
        if waiting and self._kick is not None:
            try:
                self._kick(purchase_id)
            except Exception as error:  # the schedule will get to it; never fail the caller for this
                logger.warning(
                    "could not ask the provisioner to start", extra={"error": type(error).__name__}
                )
        deadline = self._monotonic() + wait.total_seconds()
        while True:
            record = self._transactions.run(lambda unit: unit.provisioning.resource(purchase_id))
            left = deadline - self._monotonic()
            if (record is not None and record.status is not ResourceStatus.PROVISIONING) or left <= 0:
                break
            self._sleep(min(self._poll, left))
        if record is None:
            return ResourceDelivery(None)
        credentials = self._reveal(record)
        if credentials is not None:
            record = replace(record, credentials_ciphertext=None, credentials_shown_at=datetime.now(UTC))
        return ResourceDelivery(resource_view(record), credentials)

    def _reveal(self, record: ResourceRecord) -> dict[str, str] | None:
        ciphertext = record.credentials_ciphertext
        if ciphertext is None or self._secrets is None:
            return None
        try:
            plaintext = self._secrets().decrypt(
                ciphertext, credentials_context(record.purchase_id, record.id)
            )
        except (DependencyUnavailable, CiphertextMismatch) as error:
            # Kept (still pending): the next read tries again.
            logger.warning(
                "resource credentials could not be decrypted now", extra={"error": type(error).__name__}
            )
            return None
        taken = self._transactions.run_single_write(
            lambda unit: unit.provisioning.take_credentials(record.id, ciphertext)
        )
        if not taken:
            return None  # another reader got them first
        logger.info("resource credentials handed out", extra={"purchase_id": str(record.purchase_id)})
        credentials: dict[str, str] = json.loads(plaintext)
        return credentials
