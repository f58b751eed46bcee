"""Notifications of purchase status changes: what is sent, how it is signed, when it is retried.

Pure rules (no I/O). The outbox dispatcher (``billing.services.notifications``)
delivers three kinds of outbox rows, written by the purchase triggers (migration
0007) in the same transaction as the status change:

- ``notify.email``   — a plain-text email to the purchase's ``notify_email``;
- ``notify.webhook`` — a signed JSON POST to the purchase's ``webhook_url``;
- ``officex.status`` — the customer's OfficeX purchase record:
  ``POST {org_endpoint}/v1/drive/{org_id}/purchases/update``.

Webhook signature (docs/notifications.md, the recipe receivers copy)::

    OfficeX-Billing-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Receivers recompute the HMAC over the raw body bytes, compare in constant time,
and reject timestamps more than five minutes away from their clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from billing.domain.money import format_usd
from billing.domain.purchase import PurchaseStatus
from billing.domain.triggers import OFFICEX_STATUS

SIGNATURE_HEADER = "OfficeX-Billing-Signature"
#: Receivers refuse signatures whose timestamp is further than this from their clock (replay window).
SIGNATURE_TOLERANCE_S = 300
#: ``last_error`` keeps this many characters (response bodies are cut, never stored whole).
MAX_ERROR_CHARS = 500


class OutboxKind(StrEnum):
    """Outbox rows this module knows how to deliver (``resource.*`` rows belong to provisioning)."""

    NOTIFY_EMAIL = "notify.email"
    NOTIFY_WEBHOOK = "notify.webhook"
    OFFICEX_STATUS = "officex.status"


#: What the dispatcher claims; anything else in the outbox is left alone.
DISPATCHED_KINDS: tuple[OutboxKind, ...] = tuple(OutboxKind)


class DeliveryFailed(Exception):
    """A delivery did not go through (and may next time): HTTP status, network error, SES refusal…"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------ the event
class TriggerLevels(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    low_nano: int
    critical_nano: int
    termination_nano: int


class StatusChanged(BaseModel):
    """The ``purchase.status_changed`` payload the trigger writes (amounts in nano-USD)."""

    # Unknown fields are ignored: a producer adding one must not make rows undeliverable.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    #: ``purchase.created`` (finalize) and ``purchase.resource_changed`` (provisioning) refresh the
    #: OfficeX record only (``officex.status`` rows); they use the same shape with from == to.
    event: Literal["purchase.status_changed", "purchase.created", "purchase.resource_changed"]
    purchase_id: UUID
    offer_id: str
    from_status: PurchaseStatus = Field(alias="from")
    to_status: PurchaseStatus = Field(alias="to")
    transition: int
    balance_nano: int
    held_nano: int
    triggers: TriggerLevels
    grace_until: datetime | None = None
    occurred_at: datetime

    @property
    def recovered(self) -> bool:
        """True when the balance climbed (a top-up), False when it fell."""
        return _RANK[self.to_status] < _RANK[self.from_status]


_RANK = {status: rank for rank, status in enumerate(PurchaseStatus)}


@dataclass(frozen=True)
class Destinations:
    """Where a purchase's notifications go, read at delivery time (secrets still encrypted)."""

    notify_email: str | None = None
    webhook_url: str | None = None
    webhook_secret_ciphertext: bytes | None = None
    customer_org_endpoint: str | None = None
    customer_org_id: str | None = None
    officex_purchase_id: str | None = None
    customer_org_api_key_ciphertext: bytes | None = None
    #: For the OfficeX record's pricing line and vendor notes (read with the row; may be absent).
    offer_title: str | None = None
    offer_pricing: dict[str, Any] | None = None
    deposit_address: str | None = None
    deposit_chain_id: int | None = None
    deposit_token: str | None = None
    #: The purchase's resource as the customer sees it (``billing.domain.provisioning.resource_view``).
    resource: dict[str, Any] | None = None


@dataclass(frozen=True)
class OutboxMessage:
    """One claimed outbox row, with the purchase's delivery settings as they are now."""

    id: int
    kind: str
    dedupe_key: str
    purchase_id: UUID | None
    payload: dict[str, Any]
    #: Delivery attempts including the current one (the claim counts it).
    attempts: int
    created_at: datetime
    destinations: Destinations | None


def webhook_secret_context(purchase_id: UUID) -> dict[str, str]:
    return {"purpose": "webhook-secret", "purchase_id": str(purchase_id)}


def officex_key_context(purchase_id: UUID) -> dict[str, str]:
    return {"purpose": "officex-org-key", "purchase_id": str(purchase_id)}


# ------------------------------------------------------------------- formats
def iso_utc(moment: datetime) -> str:
    """``2026-11-25T10:00:00.123456Z``: UTC, explicit ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _human_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def webhook_document(delivery_id: str, event: StatusChanged) -> dict[str, Any]:
    """The webhook's JSON body. Field names are stable; amounts are USD decimal strings."""
    return {
        "id": delivery_id,
        "event": event.event,
        "purchase_id": str(event.purchase_id),
        "offer_id": event.offer_id,
        "from": event.from_status.value,
        "to": event.to_status.value,
        "officex_status": OFFICEX_STATUS[event.to_status],
        "transition": event.transition,
        "balance": format_usd(event.balance_nano),
        "held": format_usd(event.held_nano),
        "available": format_usd(event.balance_nano - event.held_nano),
        "triggers": {
            "low": format_usd(event.triggers.low_nano),
            "critical": format_usd(event.triggers.critical_nano),
            "termination": format_usd(event.triggers.termination_nano),
        },
        "grace_until": None if event.grace_until is None else iso_utc(event.grace_until),
        "occurred_at": iso_utc(event.occurred_at),
    }


def webhook_body(delivery_id: str, event: StatusChanged) -> bytes:
    """The exact bytes that are signed and sent (compact JSON, UTF-8)."""
    return json.dumps(webhook_document(delivery_id, event), separators=(",", ":")).encode()


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """The ``OfficeX-Billing-Signature`` header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_webhook_signature(
    secret: str, header: str, body: bytes, now: float, tolerance: float = SIGNATURE_TOLERANCE_S
) -> bool:
    """The receiver's check (copy it): valid HMAC over ``"<t>." + body`` and ``|now - t| <= tolerance``.

    ``body`` must be the raw request bytes, before any JSON parsing. Several
    ``v1=`` entries are accepted (any one may match), for secret rotation.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def officex_update_url(org_endpoint: str, org_id: str) -> str:
    """``POST {org_endpoint}/v1/drive/{org_id}/purchases/update``."""
    return f"{org_endpoint.rstrip('/')}/v1/drive/{quote(org_id, safe='')}/purchases/update"


def officex_update_body(
    officex_purchase_id: str, status: PurchaseStatus, record: OfficexRecord | None = None
) -> bytes:
    """OfficeX's ``IRequestUpdatePurchase``: the purchase id and its new status.

    With ``record`` (the dispatcher knows the public base URL) the body also carries the
    ``pricing`` line, ``vendor_notes`` (balance, levels, resource, links) and ``billing_url``.
    """
    document: dict[str, Any] = {"id": officex_purchase_id, "status": OFFICEX_STATUS[status]}
    if record is not None:
        document.update(record.fields())
    return json.dumps(document, separators=(",", ":")).encode()


#: OfficeX validates ``pricing`` as a short string and ``vendor_notes`` as a description.
OFFICEX_PRICING_MAX_CHARS = 250
OFFICEX_NOTES_MAX_CHARS = 4_000


@dataclass(frozen=True)
class OfficexRecord:
    """What the OfficeX purchase record shows beside its status (built at delivery time)."""

    pricing: str
    vendor_notes: str
    billing_url: str | None = None

    def fields(self) -> dict[str, str]:
        fields = {
            "pricing": _clip(self.pricing, OFFICEX_PRICING_MAX_CHARS),
            "vendor_notes": _clip(self.vendor_notes, OFFICEX_NOTES_MAX_CHARS),
        }
        if self.billing_url:
            fields["billing_url"] = self.billing_url
        return fields


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pricing_line(offer_pricing: dict[str, Any] | None, offer_title: str | None = None) -> str:
    """One line: how the offer is priced (from the offer's pricing document, read leniently)."""
    pricing = offer_pricing or {}
    markup = str(pricing.get("markup") or "")
    meter = pricing.get("meter")
    if meter == "s3_cost_export":
        region = pricing.get("region")
        where = f" in {region}" if region else ""
        line = f"Amazon S3{where} at AWS cost x {markup or '1'} (storage, requests, transfer), billed daily"
    elif meter == "gemini_tokens":
        as_of = pricing.get("prices_as_of")
        dated = f" (prices as of {as_of})" if as_of else ""
        line = f"Gemini tokens at Google list price x {markup or '1'}{dated}, billed per call"
    else:
        line = offer_title or "Usage billed against a prepaid balance"
    return f"{line}; prepaid in USDC/USDT"


def officex_record(
    event: StatusChanged, where: Destinations, *, public_base_url: str, docs_url: str | None = None
) -> OfficexRecord:
    """Pricing line, vendor notes and billing link for ``event``'s purchase."""
    base = public_base_url.rstrip("/")
    purchase_url = f"{base}/purchase/{event.purchase_id}"
    triggers = event.triggers
    lines = [
        f"Status: {event.to_status.value} (as of {_human_time(event.occurred_at)})",
        f"Balance: {format_usd(event.balance_nano)} USD "
        f"(held for pending usage: {format_usd(event.held_nano)} USD)",
        f"Levels: low {format_usd(triggers.low_nano)}, critical {format_usd(triggers.critical_nano)}, "
        f"suspension {format_usd(triggers.termination_nano)} USD",
    ]
    if event.grace_until is not None:
        lines.append(f"Resources are deleted at {_human_time(event.grace_until)} unless topped up")
    resource = where.resource or {}
    if resource:
        place = f" ({resource['region']})" if resource.get("region") else ""
        lines.append(
            f"Resource: {resource.get('kind')} {resource.get('name')}{place}: {resource.get('status')}"
        )
        if resource.get("endpoint"):
            lines.append(f"Endpoint: {resource['endpoint']}")
    if where.deposit_address:
        token = where.deposit_token or "USDC/USDT"
        chain = f" on chain {where.deposit_chain_id}" if where.deposit_chain_id is not None else ""
        lines.append(f"Top up: send {token}{chain} to {where.deposit_address}")
    lines.append(f"Purchase (customer key): {purchase_url}")
    lines.append(f"Top-up check: POST {purchase_url}/verify-topup")
    lines.append(f"API: {docs_url or base + '/openapi.json'}")
    return OfficexRecord(
        pricing=pricing_line(where.offer_pricing, where.offer_title),
        vendor_notes="\n".join(lines),
        billing_url=purchase_url,
    )


# --------------------------------------------------------------------- email
@dataclass(frozen=True)
class EmailMessage:
    subject: str
    text: str


def status_email(event: StatusChanged) -> EmailMessage:
    """Subject and plain-text body for one transition."""
    short = str(event.purchase_id)[:8]
    balance = format_usd(event.balance_nano)
    headline, paragraphs = _email_story(event, balance)
    subject = f"{headline} ({event.offer_id}, purchase {short})"
    triggers = event.triggers
    facts = "\n".join(
        [
            f"Purchase:  {event.purchase_id}",
            f"Offer:     {event.offer_id}",
            f"Status:    {event.from_status.value} -> {event.to_status.value}",
            f"Balance:   {balance} USD (held for pending usage: {format_usd(event.held_nano)} USD)",
            f"Levels:    low {format_usd(triggers.low_nano)} USD, "
            f"critical {format_usd(triggers.critical_nano)} USD, "
            f"suspension {format_usd(triggers.termination_nano)} USD",
            f"When:      {_human_time(event.occurred_at)}",
        ]
    )
    text = "\n\n".join([*paragraphs, facts, _TOP_UP_HINT.format(purchase_id=event.purchase_id)]) + "\n"
    return EmailMessage(subject=subject, text=text)


_TOP_UP_HINT = (
    "To top up, send USDC or USDT to the purchase's deposit address (GET /purchase/{purchase_id} shows it), "
    "then call POST /purchase/{purchase_id}/verify-topup or wait a few minutes."
)


def _email_story(event: StatusChanged, balance: str) -> tuple[str, list[str]]:
    """Headline and paragraphs: a fall (warnings, suspension, termination) or a climb (top-up)."""
    return _rising_story(event, balance) if event.recovered else _falling_story(event, balance)


def _falling_story(event: StatusChanged, balance: str) -> tuple[str, list[str]]:
    if event.to_status is PurchaseStatus.TERMINATED:
        return "Service terminated", [
            "The grace period ended without a top-up, so this purchase is terminated and its resources "
            "are being deleted. This cannot be undone; buy the offer again to continue.",
        ]
    if event.to_status is PurchaseStatus.SUSPENDED:
        deadline = "the end of the grace period"
        if event.grace_until is not None:
            deadline = _human_time(event.grace_until)
        return f"Service suspended: top up before {deadline}", [
            f"The balance fell to {balance} USD, at or below the suspension level, so the resources of "
            "this purchase are disabled.",
            f"Top up before {deadline} to re-enable them. After that the purchase is terminated and its "
            "resources are deleted.",
        ]
    if event.to_status is PurchaseStatus.LOW:
        return "Low balance: please top up", [
            f"The balance of this purchase fell to {balance} USD, at or below its low level."
        ]
    return "Critical balance: suspension is near", [
        f"The balance of this purchase fell to {balance} USD, at or below its critical level.",
        f"At {format_usd(event.triggers.termination_nano)} USD the resources are suspended.",
    ]


def _rising_story(event: StatusChanged, balance: str) -> tuple[str, list[str]]:
    resumed = event.from_status is PurchaseStatus.SUSPENDED
    if event.to_status is PurchaseStatus.ACTIVE:
        if resumed:
            return "Service resumed: balance restored", [
                f"Thanks for the top-up. The balance is {balance} USD and the resources are enabled again."
            ]
        return "Balance restored", [f"Thanks for the top-up. The balance is back to {balance} USD."]
    level = event.to_status.value  # low or critical: better, not yet good
    headline = (
        f"Service resumed, balance still {level}" if resumed else f"Top-up received, balance still {level}"
    )
    return headline, [
        f"Thanks for the top-up. The balance is {balance} USD, still {level}"
        + ("; the resources are enabled again." if resumed else "."),
        "Top up a little more to avoid a suspension.",
    ]


# ------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a row is never given up on.

    After a failed attempt ``n`` (1-based) the next one waits a random time in
    ``[floor, min(cap, base × 2^(n-1))]``. From ``stuck_after_attempts`` on,
    each failure is reported (error log + ``OutboxDeliveryStuck`` metric).
    """

    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=1)
    floor: timedelta = timedelta(seconds=1)
    stuck_after_attempts: int = 10

    def ceiling(self, attempts: int) -> timedelta:
        exponent = min(max(attempts, 1) - 1, 32)  # 30 s × 2^32 is far past any cap
        return min(self.cap, self.base * (1 << exponent))

    def delay(self, attempts: int, fraction: float) -> timedelta:
        """The wait after ``attempts`` failed attempts; ``fraction`` is uniform in [0, 1)."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError("fraction must be in [0, 1)")
        return max(self.floor, self.ceiling(attempts) * fraction)

    def is_stuck(self, attempts: int) -> bool:
        return attempts >= self.stuck_after_attempts


def clip_error(reason: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One printable line, at most ``limit`` characters (what ``last_error`` stores)."""
    line = "".join(char if char.isprintable() else " " for char in reason).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ------------------------------------------------------- final usage statement
FINAL_STATEMENT_EVENT = "purchase.final_statement"


class FinalStatement(BaseModel):
    """The last statement of a terminated purchase, sent before its resources are deleted.

    Written by provisioning as ``notify.email`` / ``notify.webhook`` rows (one per channel the
    purchase has) with this payload; the dispatcher renders it instead of a status change.
    Amounts are nano-USD: ``deposits`` and ``usage`` are totals over the purchase's life
    (usage positive), ``adjustments`` is signed.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event: Literal["purchase.final_statement"]
    purchase_id: UUID
    offer_id: str
    opened_at: datetime
    closed_at: datetime
    deposits_nano: int
    usage_nano: int
    adjustments_nano: int
    balance_nano: int
    held_nano: int
    usage_events: int
    resource: dict[str, Any] | None = None
    issued_at: datetime


def is_final_statement(payload: dict[str, Any]) -> bool:
    return payload.get("event") == FINAL_STATEMENT_EVENT


def final_statement_document(delivery_id: str, statement: FinalStatement) -> dict[str, Any]:
    """The webhook body of a final statement (same conventions as status webhooks)."""
    return {
        "id": delivery_id,
        "event": statement.event,
        "purchase_id": str(statement.purchase_id),
        "offer_id": statement.offer_id,
        "period": {"start": iso_utc(statement.opened_at), "end": iso_utc(statement.closed_at)},
        "deposits": format_usd(statement.deposits_nano),
        "usage": format_usd(statement.usage_nano),
        "adjustments": format_usd(statement.adjustments_nano),
        "balance": format_usd(statement.balance_nano),
        "held": format_usd(statement.held_nano),
        "usage_events": statement.usage_events,
        "resource": statement.resource,
        "issued_at": iso_utc(statement.issued_at),
    }


def final_statement_body(delivery_id: str, statement: FinalStatement) -> bytes:
    return json.dumps(final_statement_document(delivery_id, statement), separators=(",", ":")).encode()


def final_statement_email(statement: FinalStatement) -> EmailMessage:
    short = str(statement.purchase_id)[:8]
    resource = statement.resource or {}
    what = f"{resource.get('kind')} {resource.get('name')}" if resource.get("name") else "its resources"
    facts = "\n".join(
        [
            f"Purchase:     {statement.purchase_id}",
            f"Offer:        {statement.offer_id}",
            f"Period:       {_human_time(statement.opened_at)} to {_human_time(statement.closed_at)}",
            f"Deposits:     {format_usd(statement.deposits_nano)} USD",
            f"Usage:        {format_usd(statement.usage_nano)} USD ({statement.usage_events} events)",
            f"Adjustments:  {format_usd(statement.adjustments_nano)} USD",
            f"Balance left: {format_usd(statement.balance_nano)} USD",
        ]
    )
    text = "\n\n".join(
        [
            f"This purchase was terminated and {what} will now be deleted. This is its final usage "
            "statement; keep it for your records.",
            facts,
            f"The full history stays available: POST /purchase/{statement.purchase_id}/historical-billing "
            "with the customer key.",
        ]
    )
    return EmailMessage(
        subject=f"Final usage statement ({statement.offer_id}, purchase {short})", text=text + "\n"
    )
