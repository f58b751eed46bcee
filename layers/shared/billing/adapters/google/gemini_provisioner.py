"""The Gemini API key provisioner: one Google API key per purchase, restricted to the Gemini API.

Lifecycle (docs/gemini-keys.md has the reasoning):

- **provision** — ``keys.create`` with a key id derived from the purchase (``officex-<uuid hex>``),
  restricted to ``generativelanguage.googleapis.com`` and annotated with the purchase id; wait for
  the operation; fetch the key string (handed over in ``Provisioned.credentials``, never recorded).
  Because the id is deterministic, Google itself refuses a second key for the purchase: a create
  whose answer was lost is followed by ``ALREADY_EXISTS`` on the retry, and the key is adopted.
- **suspend** — the key keeps its Gemini-only API restriction and gains an IP restriction no caller
  can meet (``192.0.2.1``, RFC 5737 TEST-NET-1, never routed). The key and its string survive, so a
  resume works however long the grace period is (a deleted key is purged after 30 days).
- **resume** — the Gemini-only restrictions are put back (a soft-deleted key is undeleted first).
- **delete** — ``keys.delete`` (soft: restorable for 30 days, then purged). A key that is already
  deleted or purged is success.

Every change is a long-running operation; Google applies key changes within minutes, not at once.

Steps are recorded in the action's ``StepLog`` before the next one starts. Records name the key id
and operation names only: never the key string (the log is not encrypted).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from uuid import UUID

import requests
from aws_lambda_powertools import Logger

from billing.adapters.google.api_keys import (
    AccessTokens,
    ApiKey,
    ApiKeysClient,
    Operation,
    is_valid_key_id,
    raise_for_operation,
)
from billing.adapters.google.errors import (
    GoogleAlreadyExists,
    GoogleFailedPrecondition,
    GoogleNotFound,
    GoogleRequestRejected,
    GoogleUnavailable,
)
from billing.domain.catalog import Offer, OfferKind
from billing.domain.provisioning import Provisioned, ResourceRef, StepLog
from billing.settings import GoogleSettings

logger = Logger(child=True)

GEMINI_API_SERVICE = "generativelanguage.googleapis.com"
#: RFC 5737 TEST-NET-1: documentation-only, never routed, so no caller can satisfy the restriction.
BLOCKED_CALLER_IP = "192.0.2.1"
PURCHASE_ANNOTATION = "officex_purchase_id"
KEY_ID_PREFIX = "officex-"
#: Google keeps a deleted key restorable for this long, then purges it.
UNDELETE_WINDOW_DAYS = 30
_CLIENT_RESTRICTIONS = (
    "browserKeyRestrictions",
    "serverKeyRestrictions",
    "androidKeyRestrictions",
    "iosKeyRestrictions",
)

# Step names (one StepLog per action).
STEP_CREATE = "create_key"
STEP_READY = "key_ready"
STEP_RESTRICT = "update_restrictions"
STEP_UNDELETE = "undelete_key"
STEP_DELETE = "delete_key"
STEP_DONE = "done"


def gemini_key_id(purchase_id: UUID) -> str:
    """The purchase's API key id: ``officex-`` + 32 hex digits (a valid, non-UUID key id)."""
    return f"{KEY_ID_PREFIX}{purchase_id.hex}"


def active_restrictions() -> dict[str, Any]:
    """Gemini API only; usable from anywhere (the customer's servers)."""
    return {"apiTargets": [{"service": GEMINI_API_SERVICE}]}


def suspended_restrictions() -> dict[str, Any]:
    """Still Gemini-only (never an unrestricted key), and only from an address nobody has."""
    return {
        "apiTargets": [{"service": GEMINI_API_SERVICE}],
        "serverKeyRestrictions": {"allowedIps": [BLOCKED_CALLER_IP]},
    }


def is_active(key: ApiKey) -> bool:
    return (
        not key.deleted
        and key.api_target_services == {GEMINI_API_SERVICE}
        and not any(key.restrictions.get(name) for name in _CLIENT_RESTRICTIONS)
    )


def is_suspended(key: ApiKey) -> bool:
    """Unusable: deleted, or Gemini-only from the blocked address only."""
    if key.deleted:
        return True
    others = [name for name in _CLIENT_RESTRICTIONS if name != "serverKeyRestrictions"]
    return (
        key.api_target_services == {GEMINI_API_SERVICE}
        and key.allowed_ips == (BLOCKED_CALLER_IP,)
        and not any(key.restrictions.get(name) for name in others)
    )


class GeminiKeyProvisioner:
    """``Provisioner`` for ``OfferKind.GEMINI_API_KEY`` on the Google API Keys API."""

    kind: OfferKind = OfferKind.GEMINI_API_KEY

    def __init__(
        self,
        client: ApiKeysClient,
        *,
        operation_timeout_s: float = 30.0,
        key_service_account: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self._operation_timeout_s = operation_timeout_s
        self._key_service_account = key_service_account
        self._tags = dict(tags or {})

    def resource_for(self, purchase_id: UUID, offer: Offer) -> ResourceRef:
        """``NamesResources``: the key id from the purchase; keys are global (no region)."""
        tags = {**self._tags, "officex_offer_id": offer.id, PURCHASE_ANNOTATION: str(purchase_id)}
        return ResourceRef(purchase_id, OfferKind.GEMINI_API_KEY, gemini_key_id(purchase_id), None, tags)

    # --- provision --------------------------------------------------------------------------

    def provision(self, resource: ResourceRef, steps: StepLog) -> Provisioned:
        key_id = self._key_id(resource)
        summary = steps.outcome(STEP_DONE)
        if summary is None:
            key = self._ensure_key(resource, key_id, steps)
            summary = self._summary(key_id, key)
            steps.record(STEP_DONE, summary)
            logger.info("Gemini API key ready", extra={"key_id": key_id, "key_type": summary["key_type"]})
        # Fetched on every run, never recorded: a run that dies after this point must be able
        # to hand the credentials over again.
        key_string = self._client.get_key_string(key_id)
        return Provisioned(summary=dict(summary), credentials={"api_key": key_string})

    def _ensure_key(self, resource: ResourceRef, key_id: str, steps: StepLog) -> ApiKey:
        created = steps.outcome(STEP_CREATE)
        if created is None:
            operation = self._request_create(resource, key_id)
            steps.record(STEP_CREATE, {"key_id": key_id, "operation": operation.name if operation else None})
            if operation is not None:
                self._finish_create(operation)
        elif steps.outcome(STEP_READY) is None and created.get("operation"):
            self._finish_recorded_create(resource, key_id, str(created["operation"]))

        if steps.outcome(STEP_READY) is not None:
            return self._client.get_key(key_id)
        key = self._usable_key(resource, key_id)
        steps.record(STEP_READY, {"key_id": key_id, "uid": key.uid})
        return key

    def _request_create(self, resource: ResourceRef, key_id: str) -> Operation | None:
        """``keys.create``; ``None`` when the id is taken, i.e. an earlier attempt created the key."""
        try:
            return self._client.create_key(
                key_id,
                display_name=f"OfficeX purchase {resource.purchase_id}",
                restrictions=active_restrictions(),
                annotations={**resource.tags, PURCHASE_ANNOTATION: str(resource.purchase_id)},
                service_account_email=self._key_service_account,
            )
        except GoogleAlreadyExists:
            return None

    def _finish_create(self, operation: Operation) -> None:
        """Wait for this run's create; its failure fails the run (the worker retries it later)."""
        with contextlib.suppress(GoogleAlreadyExists):  # another attempt won the race: adopt its key
            self._finish(operation, "keys.create")

    def _finish_recorded_create(self, resource: ResourceRef, key_id: str, operation_name: str) -> None:
        """A previous run asked for the key: wait for its operation; if that failed, this run asks again."""
        try:
            operation = self._client.get_operation(operation_name)
        except GoogleNotFound:
            return  # operations are kept for a while only; the key itself tells what happened
        operation = self._client.wait_for(operation, timeout_s=self._operation_timeout_s)
        if operation.error is None or operation.error.status == "ALREADY_EXISTS":
            return
        retry = self._request_create(resource, key_id)
        if retry is not None:
            self._finish_create(retry)

    def _usable_key(self, resource: ResourceRef, key_id: str) -> ApiKey:
        """The purchase's key: existing, not deleted, and never left without the Gemini-only restriction."""
        key = self._find_key(key_id)
        if key is None:
            # Never created (its operation failed and was forgotten), or still being created.
            retry = self._request_create(resource, key_id)
            if retry is None:
                raise GoogleUnavailable(
                    f"API key {key_id} exists but is not visible yet (being created?)"
                ) from None
            self._finish_create(retry)
            key = self._client.get_key(key_id)
        owner = key.annotations.get(PURCHASE_ANNOTATION)
        if owner is not None and owner != str(resource.purchase_id):
            raise GoogleRequestRejected(
                f"API key {key_id} belongs to purchase {owner}, not {resource.purchase_id}"
            )
        if key.deleted:
            # Only `resume` brings a deleted key back: provisioning must not revive a terminated purchase.
            raise GoogleRequestRejected(f"API key {key_id} is deleted; provisioning does not restore it")
        if not is_active(key) and not is_suspended(key):
            # Someone changed its restrictions by hand: back to Gemini-only (a suspension is kept).
            self._run(
                lambda: self._client.update_restrictions(key_id, active_restrictions()), "keys.patch", key_id
            )
            key = self._client.get_key(key_id)
        return key

    def _summary(self, key_id: str, key: ApiKey) -> dict[str, Any]:
        return {
            "key_id": key_id,
            "key_name": self._client.key_name(key_id),
            "project": self._client.project,
            "uid": key.uid,
            "display_name": key.display_name,
            "api_targets": [GEMINI_API_SERVICE],
            "key_type": "auth" if key.service_account_email else "standard",
            "bound_service_account": key.service_account_email,
        }

    # --- suspend / resume / delete ----------------------------------------------------------

    def suspend(self, resource: ResourceRef, steps: StepLog) -> None:
        if steps.outcome(STEP_DONE) is not None:
            return
        key_id = self._key_id(resource)
        self._wait_recorded(steps, STEP_RESTRICT)
        key = self._find_key(key_id)
        if key is not None and not is_suspended(key):
            self._restrict(key_id, suspended_restrictions(), steps, suspending=True)
            logger.info("Gemini API key suspended", extra={"key_id": key_id})
        steps.record(STEP_DONE, {"key_id": key_id, "state": "suspended" if key is not None else "absent"})

    def resume(self, resource: ResourceRef, steps: StepLog) -> None:
        if steps.outcome(STEP_DONE) is not None:
            return
        key_id = self._key_id(resource)
        self._wait_recorded(steps, STEP_UNDELETE)
        self._wait_recorded(steps, STEP_RESTRICT)
        key = self._find_key(key_id)
        if key is None or key.deleted:
            # Deleted (by hand, or by an older suspension scheme): restore the same key string.
            # A key `get` does not show may still be restorable, so undelete is tried either way.
            try:
                operation = self._client.undelete_key(key_id)
            except GoogleNotFound:
                raise GoogleNotFound(
                    f"API key {key_id} no longer exists (purged {UNDELETE_WINDOW_DAYS} days after a "
                    "deletion?); the purchase needs a new key (provision again)",
                    status="NOT_FOUND",
                ) from None
            except GoogleFailedPrecondition:
                raise GoogleUnavailable(f"API key {key_id} cannot be undeleted yet") from None
            self._record_operation(steps, STEP_UNDELETE, operation)
            self._finish(operation, "keys.undelete")
            key = self._client.get_key(key_id)
        if not is_active(key):
            self._restrict(key_id, active_restrictions(), steps, suspending=False)
        logger.info("Gemini API key resumed", extra={"key_id": key_id})
        steps.record(STEP_DONE, {"key_id": key_id, "state": "active"})

    def delete(self, resource: ResourceRef, steps: StepLog) -> None:
        if steps.outcome(STEP_DONE) is not None:
            return
        key_id = self._key_id(resource)
        self._wait_recorded(steps, STEP_DELETE)
        key = self._find_key(key_id)
        if key is not None and not key.deleted:
            try:
                operation = self._client.delete_key(key_id)
            except (GoogleNotFound, GoogleFailedPrecondition):
                key = self._find_key(key_id)  # deleted meanwhile (e.g. by a previous run's operation)?
                if key is not None and not key.deleted:
                    raise GoogleUnavailable(f"API key {key_id} could not be deleted yet") from None
            else:
                self._record_operation(steps, STEP_DELETE, operation)
                with contextlib.suppress(GoogleNotFound):  # purged meanwhile: gone is what we want
                    self._finish(operation, "keys.delete")
                logger.info("Gemini API key deleted", extra={"key_id": key_id})
        steps.record(
            STEP_DONE,
            {
                "key_id": key_id,
                "state": "deleted" if key is not None else "absent",
                "purged_after_days": UNDELETE_WINDOW_DAYS,
            },
        )

    # --- helpers ----------------------------------------------------------------------------

    def _key_id(self, resource: ResourceRef) -> str:
        if resource.kind is not OfferKind.GEMINI_API_KEY:
            raise ValueError(f"{type(self).__name__} handles {OfferKind.GEMINI_API_KEY}, not {resource.kind}")
        key_id = resource.name or gemini_key_id(resource.purchase_id)
        if not is_valid_key_id(key_id):
            raise ValueError(f"{key_id!r} is not a valid API key id; use gemini_key_id(purchase_id)")
        return key_id

    def _find_key(self, key_id: str) -> ApiKey | None:
        try:
            return self._client.get_key(key_id)
        except GoogleNotFound:
            return None

    def _restrict(
        self, key_id: str, restrictions: dict[str, Any], steps: StepLog, *, suspending: bool
    ) -> None:
        try:
            operation = self._client.update_restrictions(key_id, restrictions)
        except GoogleFailedPrecondition:
            key = self._find_key(key_id)
            if suspending and (key is None or key.deleted):
                return  # deleted meanwhile: unusable, which is all a suspension needs
            raise GoogleUnavailable(f"keys.patch {key_id}: the key is not in a state to update yet") from None
        self._record_operation(steps, STEP_RESTRICT, operation)
        self._finish(operation, "keys.patch")

    def _run(self, request: Callable[[], Operation], what: str, key_id: str) -> None:
        try:
            operation = request()
        except GoogleFailedPrecondition as exc:
            raise GoogleUnavailable(f"{what} {key_id}: {exc}") from None
        self._finish(operation, what)

    def _finish(self, operation: Operation, what: str) -> Operation:
        operation = self._client.wait_for(operation, timeout_s=self._operation_timeout_s)
        return raise_for_operation(operation, what)

    @staticmethod
    def _record_operation(steps: StepLog, step: str, operation: Operation) -> None:
        """Remember the first operation of a step, so a run cut short can wait for it next time."""
        if steps.outcome(step) is None:
            steps.record(step, {"operation": operation.name})

    def _wait_recorded(self, steps: StepLog, step: str) -> None:
        """Let a previous run's operation finish; its result is judged by re-reading the key."""
        outcome = steps.outcome(step)
        name = outcome.get("operation") if outcome else None
        if not name:
            return
        try:
            operation = self._client.get_operation(str(name))
        except GoogleNotFound:
            return
        self._client.wait_for(operation, timeout_s=self._operation_timeout_s)


def gemini_key_provisioner_from(
    settings: GoogleSettings,
    *,
    tags: dict[str, str] | None = None,
    tokens: AccessTokens | None = None,
    session: requests.Session | None = None,
) -> GeminiKeyProvisioner:
    """The provisioner for the configured project; tokens from the Secrets Manager key unless given."""
    if not settings.project_id:
        raise ValueError("GOOGLE_PROJECT_ID is not set: Gemini API keys cannot be provisioned")
    if not (settings.key_service_account or settings.allow_standard_keys):
        raise ValueError(
            "GEMINI_KEY_SERVICE_ACCOUNT is not set: the Gemini API no longer accepts standard API keys "
            "(set GEMINI_ALLOW_STANDARD_KEYS=true only where Google still does)"
        )
    if tokens is None:
        if not settings.service_account_secret_arn:
            raise ValueError(
                "GOOGLE_SERVICE_ACCOUNT_SECRET_ARN is not set: Gemini keys cannot be provisioned"
            )
        from billing.adapters.google.credentials import tokens_from_secret  # noqa: PLC0415

        tokens = tokens_from_secret(
            settings.service_account_secret_arn,
            token_uri=settings.token_uri,
            timeout_s=settings.http_timeout_s,
            session=session,
        )
    client = ApiKeysClient(
        settings.project_id,
        tokens,
        base_url=settings.api_keys_base_url,
        timeout_s=settings.http_timeout_s,
        session=session,
    )
    return GeminiKeyProvisioner(
        client,
        operation_timeout_s=settings.operation_timeout_s,
        key_service_account=settings.key_service_account,
        tags=tags,
    )
