"""Provisioning contract: what a purchase's cloud resource is and how it moves through its life.

A provisioner (S3 bucket, Gemini API key) performs each action as a sequence
of named steps. Every step is idempotent against the cloud and its outcome is
recorded in a :class:`StepLog` before the next step starts, so an action cut
short by a crash resumes where it stopped and never creates a resource twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from billing.domain.catalog import Offer, OfferKind
from billing.domain.purchase import PurchaseStatus


class ResourceAction(StrEnum):
    PROVISION = "provision"
    SUSPEND = "suspend"
    RESUME = "resume"
    DELETE = "delete"


@dataclass(frozen=True)
class ResourceRef:
    """One purchase's resource; ``name`` is derived from the purchase, so retries find the same one."""

    purchase_id: UUID
    kind: OfferKind
    name: str
    region: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Provisioned:
    """What provisioning hands over: a summary anyone may see, credentials shown to the customer once."""

    summary: dict[str, Any]
    credentials: dict[str, str] = field(default_factory=dict)


class StepLog(Protocol):
    """The recorded outcomes of one action's steps (Postgres in production)."""

    def outcome(self, step: str) -> dict[str, Any] | None:
        """What ``step`` recorded when it completed, or ``None`` if it has not."""
        ...

    def record(self, step: str, outcome: dict[str, Any]) -> None:
        """Mark ``step`` complete with ``outcome`` (no secrets in clear: the log is not encrypted)."""
        ...


class Provisioner(Protocol):
    kind: OfferKind

    def provision(self, resource: ResourceRef, steps: StepLog) -> Provisioned: ...
    def suspend(self, resource: ResourceRef, steps: StepLog) -> None: ...
    def resume(self, resource: ResourceRef, steps: StepLog) -> None: ...
    def delete(self, resource: ResourceRef, steps: StepLog) -> None: ...


class ProvisioningFailed(Exception):
    """A cloud call failed in a way a later retry may fix; the action resumes from its last step."""


# ---------------------------------------------------------------------------
# Additions for the provisioning framework (issue #7). Additive: nothing above changes.
#
# Rules every provisioner follows (docs/provisioning.md):
#   1. A step is recorded with ``steps.record`` only after its cloud call succeeded, and a step
#      whose outcome is recorded is skipped on a rerun. A crash between the call and the record
#      repeats the call, so every call must be idempotent (create → "already exists" is success,
#      delete → "not found" is success).
#   2. A step that creates a secret (an access key, an API key) is never recorded: it is the last
#      thing ``provision`` does and its secret travels in ``Provisioned.credentials``. The framework
#      stores the credentials (KMS-encrypted) in the same transaction that marks the action done,
#      so a rerun of an unfinished ``provision`` first revokes every key it finds and then issues a
#      fresh one: a crash can lose a secret nobody has seen yet, never leave two live keys.
#   3. ``resource_for`` derives the resource's name from the purchase (deterministic); the
#      framework stores name and region on first use and always hands the stored ones back.
#   4. Work that cannot finish in one run (emptying a huge bucket) raises
#      ``ProvisioningIncomplete`` after making progress; the action is called again later.
# ---------------------------------------------------------------------------


class ResourceStatus(StrEnum):
    """``provisioned_resources.status``."""

    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


#: What each completed action leaves the resource as.
STATUS_AFTER: dict[ResourceAction, ResourceStatus] = {
    ResourceAction.PROVISION: ResourceStatus.ACTIVE,
    ResourceAction.SUSPEND: ResourceStatus.SUSPENDED,
    ResourceAction.RESUME: ResourceStatus.ACTIVE,
    ResourceAction.DELETE: ResourceStatus.DELETED,
}


class NamesResources(Protocol):
    """The part of a provisioner the framework asks for a purchase's resource (name, region, tags).

    Kept apart from :class:`Provisioner` so existing provisioners keep type-checking; a
    provisioner registered with the worker must implement both.
    """

    kind: OfferKind

    def resource_for(self, purchase_id: UUID, offer: Offer) -> ResourceRef: ...


class ProvisioningIncomplete(ProvisioningFailed):
    """Progress was made but the action is not finished (e.g. a bucket too large to empty in one
    run); the framework calls the action again after ``retry_after`` without counting a failure."""

    def __init__(self, reason: str, retry_after: timedelta = timedelta(minutes=10)) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class LeaseLost(Exception):
    """The job's claim was taken over (its lease ran out): this run's outcome must not be written."""


@dataclass(frozen=True)
class ResourceRecord:
    """A row of ``provisioned_resources`` (the credentials still encrypted)."""

    id: UUID
    purchase_id: UUID
    kind: OfferKind
    name: str
    region: str | None
    status: ResourceStatus
    summary: dict[str, Any]
    credentials_ciphertext: bytes | None
    credentials_shown_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def ref(self, tags: dict[str, str] | None = None) -> ResourceRef:
        return ResourceRef(self.purchase_id, self.kind, self.name, self.region, dict(tags or {}))


@dataclass(frozen=True)
class ResourceJob:
    """One claimed ``resource.*`` outbox row: an action to perform on a purchase's resource."""

    id: int
    purchase_id: UUID
    action: ResourceAction
    dedupe_key: str
    payload: dict[str, Any]
    #: Attempts including the current one (the claim counts it); also the claim's fencing token.
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class PurchaseFacts:
    """What the provisioning worker needs to know about the purchase behind a job."""

    id: UUID
    offer_id: str
    status: PurchaseStatus
    balance_nano: int
    held_nano: int
    created_at: datetime
    terminated_at: datetime | None
    has_email: bool
    has_webhook: bool


@dataclass(frozen=True)
class StatementTotals:
    deposits_nano: int
    usage_nano: int
    adjustments_nano: int
    usage_events: int


@dataclass(frozen=True)
class StatementRows:
    """The final-statement outbox rows of a purchase: how many, how many still unsent, since when."""

    total: int
    pending: int
    first_created_at: datetime | None


RESOURCE_KIND_PREFIX = "resource."
#: Outbox kinds the provisioning worker claims (the dispatcher never touches them).
RESOURCE_KINDS: tuple[str, ...] = tuple(f"{RESOURCE_KIND_PREFIX}{action.value}" for action in ResourceAction)


def action_of_kind(kind: str) -> ResourceAction:
    if not kind.startswith(RESOURCE_KIND_PREFIX):
        raise ValueError(f"{kind!r} is not a resource action")
    return ResourceAction(kind.removeprefix(RESOURCE_KIND_PREFIX))


def credentials_context(purchase_id: UUID, resource_id: UUID) -> dict[str, str]:
    """KMS encryption context of a resource's one-time credentials."""
    return {
        "purpose": "resource-credentials",
        "purchase_id": str(purchase_id),
        "resource_id": str(resource_id),
    }


def resource_view(record: ResourceRecord) -> dict[str, Any]:
    """What the customer sees of a resource (``GET /purchase``, finalize): never a secret.

    ``credentials`` says where the one-time credentials are: ``pending`` (the next read shows
    them), ``shown`` (already handed out) or ``none`` (not issued, or the resource is gone).
    """
    if record.credentials_ciphertext is not None:
        credentials = "pending"
    elif record.credentials_shown_at is not None:
        credentials = "shown"
    else:
        credentials = "none"
    return {
        **record.summary,
        "kind": record.kind.value,
        "status": record.status.value,
        "name": record.name,
        "region": record.region,
        "credentials": credentials,
        "updated_at": record.updated_at.isoformat(),
    }


class ResourceProvisioner(Provisioner, NamesResources, Protocol):
    """What the provisioning worker needs per offer kind: the actions and the naming."""
