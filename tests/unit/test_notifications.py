"""Notification rules: the signature recipe, texts per transition, backoff; the dispatcher on fakes."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from billing.domain.errors import CiphertextMismatch
from billing.domain.notifications import (
    SIGNATURE_HEADER,
    DeliveryFailed,
    Destinations,
    EmailMessage,
    OutboxKind,
    OutboxMessage,
    RetryPolicy,
    StatusChanged,
    clip_error,
    officex_update_body,
    officex_update_url,
    sign_webhook,
    status_email,
    verify_webhook_signature,
    webhook_body,
)
from billing.domain.purchase import PurchaseStatus
from billing.services.notifications import DispatchPolicy, OutboxDispatcher, unconfigured_email

DOCS = Path(__file__).resolve().parents[2] / "docs" / "notifications.md"
SECRET = "whsec_test-secret-9f2c"
PURCHASE = UUID("3f6c0a52-0d7e-4c1a-9a51-6a1f0c7e2b11")
OCCURRED = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
GRACE = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _payload(
    from_status: str, to_status: str, balance_nano: int = 950_000_000, **extra: Any
) -> dict[str, Any]:
    """What migration 0007 writes (timestamps as jsonb renders them)."""
    return {
        "event": "purchase.status_changed",
        "purchase_id": str(PURCHASE),
        "offer_id": "gemini-api-key",
        "from": from_status,
        "to": to_status,
        "transition": 4,
        "balance_nano": balance_nano,
        "held_nano": 50_000_000,
        "triggers": {
            "low_nano": 5_000_000_000,
            "critical_nano": 2_000_000_000,
            "termination_nano": 1_000_000_000,
        },
        "grace_until": "2026-11-28T10:00:00+00:00" if to_status == "suspended" else None,
        "occurred_at": "2026-11-25T10:00:00.123456+00:00",
        **extra,
    }


def _event(from_status: str, to_status: str, **extra: Any) -> StatusChanged:
    return StatusChanged.model_validate(_payload(from_status, to_status, **extra))


# -------------------------------------------------------- signature recipe
def _independent_verify(secret: str, header: str, body: bytes, now: float) -> bool:
    """From the docs' prose, not the code: t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>." + body))."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    if abs(now - int(fields["t"])) > 300:
        return False
    mac = hmac.new(secret.encode("utf-8"), fields["t"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields["v1"])


def _documented_verifier() -> Callable[..., bool]:
    """The copy-paste block of docs/notifications.md, executed as a receiver would paste it."""
    text = DOCS.read_text()
    block = re.search(r"<!-- verifier:start -->\s*```python\n(.*?)```\s*<!-- verifier:end -->", text, re.S)
    assert block, "docs/notifications.md lost its verifier block"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), str(DOCS), "exec"), namespace)
    verifier = namespace["verify_officex_billing_signature"]
    assert callable(verifier)
    return verifier  # type: ignore[no-any-return]


def test_header_has_the_documented_shape() -> None:
    header = sign_webhook(SECRET, b"{}", 1_764_064_800)

    assert re.fullmatch(r"t=1764064800,v1=[0-9a-f]{64}", header)
    assert SIGNATURE_HEADER == "OfficeX-Billing-Signature"


def test_a_signature_verifies_with_an_independent_implementation_of_the_recipe() -> None:
    body = webhook_body("status:x:1:notify.webhook", _event("active", "low"))
    now = int(time.time())

    header = sign_webhook(SECRET, body, now)

    assert _independent_verify(SECRET, header, body, now + 10)
    assert verify_webhook_signature(SECRET, header, body, now + 10)


def test_the_copy_paste_verifier_in_the_docs_accepts_our_signatures_and_nothing_else() -> None:
    verify = _documented_verifier()
    body = webhook_body("status:x:1:notify.webhook", _event("active", "low"))
    header = sign_webhook(SECRET, body, int(time.time()))

    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, body + b" ")
    assert not verify("whsec_other", header, body)
    assert not verify(SECRET, sign_webhook(SECRET, body, int(time.time()) - 301), body)


@pytest.mark.parametrize(
    ("secret", "body", "age_s"),
    [
        (SECRET, b'{"id":"a","balance":"1.000000000"}', 0),  # reference: valid
        (SECRET, b'{"id":"a","balance":"9.000000000"}', 0),  # tampered body
        ("whsec_wrong", b'{"id":"a","balance":"1.000000000"}', 0),  # wrong secret
        (SECRET, b'{"id":"a","balance":"1.000000000"}', 301),  # stale: older than 5 minutes
        (SECRET, b'{"id":"a","balance":"1.000000000"}', -301),  # from the future
    ],
)
def test_verification_fails_for_tampering_wrong_secret_and_stale_timestamps(
    secret: str, body: bytes, age_s: int
) -> None:
    now = 1_764_064_800
    header = sign_webhook(SECRET, b'{"id":"a","balance":"1.000000000"}', now - age_s)

    valid = verify_webhook_signature(secret, header, body, now)

    expected = secret == SECRET and body == b'{"id":"a","balance":"1.000000000"}' and abs(age_s) <= 300
    assert valid is expected
    assert _independent_verify(secret, header, body, now) is expected


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", "t=1764064800", "t=abc,v1=00", "t=1764064800,v0=" + "0" * 64, "garbage"],
)
def test_malformed_headers_do_not_verify(header: str) -> None:
    assert not verify_webhook_signature(SECRET, header, b"{}", 1_764_064_800)


def test_any_of_several_v1_signatures_may_match_for_secret_rotation() -> None:
    body, now = b"{}", 1_764_064_800
    good = sign_webhook(SECRET, body, now)
    rotated = f"{good.split(',')[0]},v1={'0' * 64},{good.split(',')[1]}"

    assert verify_webhook_signature(SECRET, rotated, body, now)


# ---------------------------------------------------------- webhook / OfficeX bodies
def test_webhook_body_has_stable_fields_usd_strings_and_the_dedupe_id() -> None:
    body = json.loads(webhook_body("status:k:4:notify.webhook", _event("critical", "suspended")))

    assert body == {
        "id": "status:k:4:notify.webhook",
        "event": "purchase.status_changed",
        "purchase_id": str(PURCHASE),
        "offer_id": "gemini-api-key",
        "from": "critical",
        "to": "suspended",
        "officex_status": "BLOCKED",
        "transition": 4,
        "balance": "0.950000000",
        "held": "0.050000000",
        "available": "0.900000000",
        "triggers": {"low": "5.000000000", "critical": "2.000000000", "termination": "1.000000000"},
        "grace_until": "2026-11-28T10:00:00Z",
        "occurred_at": "2026-11-25T10:00:00.123456Z",
    }


def test_unknown_payload_fields_are_ignored_and_missing_ones_refused() -> None:
    assert _event("active", "low", added_later="x").to_status is PurchaseStatus.LOW
    with pytest.raises(ValueError, match="transition"):
        StatusChanged.model_validate(
            {k: v for k, v in _payload("active", "low").items() if k != "transition"}
        )


@pytest.mark.parametrize(
    ("status", "officex"),
    [
        (PurchaseStatus.ACTIVE, "RUNNING"),
        (PurchaseStatus.LOW, "PAYMENT_REQUIRED"),
        (PurchaseStatus.CRITICAL, "PAYMENT_REQUIRED"),
        (PurchaseStatus.SUSPENDED, "BLOCKED"),
        (PurchaseStatus.TERMINATED, "CANCELED"),
    ],
)
def test_officex_update_uses_the_status_mapping(status: PurchaseStatus, officex: str) -> None:
    assert json.loads(officex_update_body("PurchaseID_1", status)) == {
        "id": "PurchaseID_1",
        "status": officex,
    }


def test_officex_update_url_joins_endpoint_and_escapes_the_org_id() -> None:
    assert (
        officex_update_url("https://org.example.com/api/", "DriveID_1")
        == "https://org.example.com/api/v1/drive/DriveID_1/purchases/update"
    )
    assert officex_update_url("https://o.example", "a/b?c").endswith("/v1/drive/a%2Fb%3Fc/purchases/update")


# ------------------------------------------------------------------- emails
@pytest.mark.parametrize(
    ("from_status", "to_status", "subject_start", "body_has"),
    [
        ("active", "low", "Low balance: please top up", "at or below its low level"),
        ("low", "critical", "Critical balance: suspension is near", "At 1.000000000 USD the resources"),
        ("critical", "suspended", "Service suspended: top up before 2026-11-28 10:00 UTC", "are disabled"),
        ("suspended", "terminated", "Service terminated", "resources are being deleted"),
        ("low", "active", "Balance restored", "back to 0.950000000 USD"),
        ("suspended", "active", "Service resumed: balance restored", "enabled again"),
        ("critical", "low", "Top-up received, balance still low", "still low."),
        ("suspended", "critical", "Service resumed, balance still critical", "enabled again"),
    ],
)
def test_email_text_per_transition(
    from_status: str, to_status: str, subject_start: str, body_has: str
) -> None:
    message = status_email(_event(from_status, to_status))

    assert message.subject.startswith(subject_start)
    assert message.subject.endswith("(gemini-api-key, purchase 3f6c0a52)")
    assert body_has in message.text
    assert f"Purchase:  {PURCHASE}" in message.text
    assert "Balance:   0.950000000 USD (held for pending usage: 0.050000000 USD)" in message.text
    assert f"{from_status} -> {to_status}" in message.text
    assert "\n" not in message.subject


def test_every_transition_gets_the_text_of_its_direction() -> None:
    statuses = list(PurchaseStatus)
    transitions = [(a, b) for a in statuses[:-1] for b in statuses if a is not b]  # terminated is final

    subjects = {status_email(_event(a.value, b.value)).subject.split(" (")[0] for a, b in transitions}

    # falling: low, critical, suspended, terminated; climbing: active (x2), low (x2), critical (resumed)
    assert len(subjects) == 9


# ------------------------------------------------------------------- backoff
def test_backoff_ceiling_doubles_from_30_seconds_and_caps_at_one_hour() -> None:
    policy = RetryPolicy()

    ceilings = [policy.ceiling(attempts).total_seconds() for attempts in range(1, 11)]

    assert ceilings == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert policy.ceiling(10_000) == timedelta(hours=1)


@pytest.mark.parametrize("attempts", [1, 2, 5, 8, 50])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.999999])
def test_backoff_has_full_jitter_within_floor_and_ceiling(attempts: int, fraction: float) -> None:
    policy = RetryPolicy()

    delay = policy.delay(attempts, fraction)

    assert timedelta(seconds=1) <= delay <= policy.ceiling(attempts)
    if fraction >= 0.5:
        assert delay >= policy.ceiling(attempts) / 2


def test_backoff_refuses_fractions_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay(1, 1.0)
    with pytest.raises(ValueError):
        RetryPolicy().delay(1, -0.1)


def test_rows_become_stuck_after_n_attempts_but_are_never_given_up() -> None:
    policy = RetryPolicy(stuck_after_attempts=10)

    assert not policy.is_stuck(9)
    assert policy.is_stuck(10) and policy.is_stuck(1_000)
    assert policy.delay(1_000, 0.5) == timedelta(minutes=30)  # still scheduled, never dropped


def test_clip_error_keeps_one_bounded_line() -> None:
    assert clip_error("HTTP 500:\nboom\x00") == "HTTP 500: boom"
    assert len(clip_error("x" * 5_000)) == 500


# ------------------------------------------------------ dispatcher on fakes
@dataclass
class FakeOutbox:
    rows: list[OutboxMessage]
    delivered: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    rescheduled: dict[int, tuple[timedelta, str]] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)
    claimed_kinds: list[list[str]] = field(default_factory=list)

    def claim_due(self, kinds: Sequence[str], limit: int, lease: timedelta) -> list[OutboxMessage]:
        self.claimed_kinds.append(list(kinds))
        batch = [row for row in self.rows if row.kind in kinds][:limit]
        self.rows = [row for row in self.rows if row not in batch]
        return batch

    def mark_delivered(self, message: OutboxMessage) -> bool:
        self.delivered.append(message.id)
        return True

    def mark_skipped(self, message: OutboxMessage, reason: str) -> bool:
        self.skipped[message.id] = reason
        return True

    def reschedule(self, message: OutboxMessage, delay: timedelta, error: str) -> bool:
        self.rescheduled[message.id] = (delay, error)
        return True

    def release(self, message: OutboxMessage) -> bool:
        self.released.append(message.id)
        return True


class FakeSecrets:
    def __init__(self, plaintexts: dict[bytes, str]) -> None:
        self.plaintexts = plaintexts
        self.contexts: list[dict[str, str]] = []

    def encrypt(self, plaintext: str, context: dict[str, str]) -> bytes:
        raise AssertionError("the dispatcher never encrypts")

    def decrypt(self, ciphertext: bytes, context: dict[str, str]) -> str:
        self.contexts.append(context)
        if ciphertext not in self.plaintexts:
            raise CiphertextMismatch("wrong context")
        return self.plaintexts[ciphertext]


@dataclass
class FakeHttp:
    fail_with: str | None = None
    posts: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def post_json(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        self.posts.append((url, body, headers))
        if self.fail_with is not None:
            raise DeliveryFailed(self.fail_with)


@dataclass
class FakeEmail:
    sent: list[tuple[str, EmailMessage]] = field(default_factory=list)

    def send(self, to: str, message: EmailMessage) -> None:
        self.sent.append((to, message))


DESTINATIONS = Destinations(
    notify_email="ops@customer.example",
    webhook_url="https://hooks.customer.example/billing",
    webhook_secret_ciphertext=b"ct-webhook",
    customer_org_endpoint="https://org.customer.example",
    customer_org_id="DriveID_1",
    officex_purchase_id="PurchaseID_1",
    customer_org_api_key_ciphertext=b"ct-org",
)
NOW = datetime(2026, 11, 25, 10, 0, 5, tzinfo=UTC)


def _row(row_id: int, kind: OutboxKind, *, attempts: int = 1, **changes: Any) -> OutboxMessage:
    message = OutboxMessage(
        id=row_id,
        kind=kind.value,
        dedupe_key=f"status:{PURCHASE}:4:{kind.value}",
        purchase_id=PURCHASE,
        payload=_payload("critical", "suspended"),
        attempts=attempts,
        created_at=NOW,
        destinations=DESTINATIONS,
    )
    return replace(message, **changes)


def _dispatcher(
    outbox: FakeOutbox, http: FakeHttp, email: FakeEmail | None = None
) -> tuple[OutboxDispatcher, FakeSecrets]:
    secrets = FakeSecrets({b"ct-webhook": SECRET, b"ct-org": "org_key_secret_123"})
    dispatcher = OutboxDispatcher(
        outbox,
        email=lambda: email or FakeEmail(),
        http=http,
        secrets=lambda: secrets,
        policy=DispatchPolicy(batch_size=10),
        clock=lambda: NOW,
        jitter=lambda: 0.5,
    )
    return dispatcher, secrets


def _forever() -> timedelta:
    return timedelta(minutes=2)


def test_dispatcher_signs_webhooks_and_bearer_authenticates_officex() -> None:
    outbox, http, email = (
        FakeOutbox([_row(1, OutboxKind.NOTIFY_WEBHOOK), _row(2, OutboxKind.OFFICEX_STATUS)]),
        FakeHttp(),
        FakeEmail(),
    )
    dispatcher, secrets = _dispatcher(outbox, http, email)

    outcome = dispatcher.run(time_left=_forever)

    assert (outcome.delivered, outcome.retried) == (2, 0)
    (hook_url, hook_body, hook_headers), (org_url, org_body, org_headers) = http.posts
    assert hook_url == DESTINATIONS.webhook_url
    assert verify_webhook_signature(SECRET, hook_headers[SIGNATURE_HEADER], hook_body, NOW.timestamp())
    assert json.loads(hook_body)["id"] == f"status:{PURCHASE}:4:notify.webhook"
    assert org_url == "https://org.customer.example/v1/drive/DriveID_1/purchases/update"
    assert org_headers == {"Authorization": "Bearer org_key_secret_123"}
    assert json.loads(org_body) == {"id": "PurchaseID_1", "status": "BLOCKED"}
    assert secrets.contexts == [
        {"purpose": "webhook-secret", "purchase_id": str(PURCHASE)},
        {"purpose": "officex-org-key", "purchase_id": str(PURCHASE)},
    ]


def test_a_failure_is_rescheduled_with_backoff_and_secrets_never_reach_last_error() -> None:
    outbox = FakeOutbox([_row(1, OutboxKind.OFFICEX_STATUS, attempts=3)])
    http = FakeHttp(fail_with="HTTP 401: bad token Bearer org_key_secret_123")
    dispatcher, _ = _dispatcher(outbox, http)

    outcome = dispatcher.run(time_left=_forever)

    assert (outcome.delivered, outcome.retried, outcome.stuck) == (0, 1, 0)
    delay, error = outbox.rescheduled[1]
    assert delay == RetryPolicy().ceiling(3) / 2  # jitter 0.5
    assert error == "HTTP 401: bad token Bearer [redacted]"


def test_failures_from_the_stuck_threshold_on_are_reported_as_stuck() -> None:
    outbox = FakeOutbox(
        [_row(1, OutboxKind.NOTIFY_WEBHOOK, attempts=9), _row(2, OutboxKind.NOTIFY_WEBHOOK, attempts=10)]
    )
    dispatcher, _ = _dispatcher(outbox, FakeHttp(fail_with="HTTP 503"))

    outcome = dispatcher.run(time_left=_forever)

    assert (outcome.retried, outcome.stuck) == (2, 1)
    assert outcome.as_metrics()["OutboxDeliveryStuck"] == 1


def test_a_secret_that_does_not_decrypt_is_retried_not_dropped() -> None:
    row = _row(
        1, OutboxKind.NOTIFY_WEBHOOK, destinations=replace(DESTINATIONS, webhook_secret_ciphertext=b"moved")
    )
    outbox = FakeOutbox([row])
    dispatcher, _ = _dispatcher(outbox, FakeHttp())

    dispatcher.run(time_left=_forever)

    assert "does not decrypt" in outbox.rescheduled[1][1]
    assert not outbox.delivered and not outbox.skipped


def test_a_malformed_payload_is_retried_not_dropped() -> None:
    outbox = FakeOutbox([_row(1, OutboxKind.NOTIFY_EMAIL, payload={"event": "purchase.status_changed"})])
    dispatcher, _ = _dispatcher(outbox, FakeHttp())

    dispatcher.run(time_left=_forever)

    assert outbox.rescheduled[1][1].startswith("malformed payload")


@pytest.mark.parametrize(
    ("kind", "destinations", "reason"),
    [
        (OutboxKind.NOTIFY_EMAIL, replace(DESTINATIONS, notify_email=None), "no notification email"),
        (OutboxKind.NOTIFY_WEBHOOK, replace(DESTINATIONS, webhook_url=None), "no webhook"),
        (
            OutboxKind.OFFICEX_STATUS,
            replace(DESTINATIONS, customer_org_api_key_ciphertext=None),
            "OfficeX org",
        ),
        (OutboxKind.OFFICEX_STATUS, None, "no longer exists"),
    ],
)
def test_rows_without_a_channel_are_settled_as_skipped(
    kind: OutboxKind, destinations: Destinations | None, reason: str
) -> None:
    outbox = FakeOutbox([_row(1, kind, destinations=destinations)])
    http = FakeHttp()
    dispatcher, _ = _dispatcher(outbox, http)

    outcome = dispatcher.run(time_left=_forever)

    assert outcome.skipped == 1 and reason in outbox.skipped[1]
    assert not http.posts


def test_email_goes_to_the_purchase_address_with_the_transition_text() -> None:
    email = FakeEmail()
    outbox = FakeOutbox([_row(1, OutboxKind.NOTIFY_EMAIL)])
    dispatcher, _ = _dispatcher(outbox, FakeHttp(), email)

    dispatcher.run(time_left=_forever)

    ((to, message),) = email.sent
    assert to == "ops@customer.example"
    assert message.subject.startswith("Service suspended")
    assert outbox.delivered == [1]


def test_claims_only_the_dispatched_kinds() -> None:
    outbox = FakeOutbox([])
    dispatcher, _ = _dispatcher(outbox, FakeHttp())

    dispatcher.run(time_left=_forever)

    assert outbox.claimed_kinds == [["notify.email", "notify.webhook", "officex.status"]]


def test_rows_claimed_when_time_runs_out_are_given_back_untried() -> None:
    outbox = FakeOutbox(
        [
            _row(1, OutboxKind.NOTIFY_WEBHOOK),
            _row(2, OutboxKind.NOTIFY_WEBHOOK),
            _row(3, OutboxKind.NOTIFY_WEBHOOK),
        ]
    )
    http = FakeHttp()
    budget = iter([timedelta(seconds=s) for s in (100, 100, 100, 10, 10)])
    dispatcher, _ = _dispatcher(outbox, http)

    outcome = dispatcher.run(time_left=lambda: next(budget))

    assert outcome.delivered == 2 and outbox.released == [3]
    assert len(http.posts) == 2


def test_an_unconfigured_email_sender_keeps_email_rows_waiting() -> None:
    outbox = FakeOutbox([_row(1, OutboxKind.NOTIFY_EMAIL), _row(2, OutboxKind.NOTIFY_WEBHOOK)])
    dispatcher = OutboxDispatcher(
        outbox,
        email=lambda: unconfigured_email("email (NOTIFICATION_SENDER)"),
        http=FakeHttp(),
        secrets=lambda: FakeSecrets({b"ct-webhook": SECRET}),
    )

    outcome = dispatcher.run(time_left=_forever)

    assert (outcome.delivered, outcome.retried) == (1, 1)
    assert outbox.rescheduled[1][1] == "email (NOTIFICATION_SENDER) is not configured"
