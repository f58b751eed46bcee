"""The outbox dispatcher on real Postgres, moto (SES, KMS) and a local HTTPS receiver.

Outbox rows are made the real way: a purchase with delivery settings, credited and then
debited through the ledger, so the status triggers of migration 0007 write them.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import psycopg
import pytest
from moto import mock_aws
from moto.ses.models import ses_backends

from billing.adapters.aws.kms import KmsSecretBox
from billing.adapters.aws.ses import SesEmailSender
from billing.adapters.http_delivery import UrllibJsonPoster
from billing.adapters.postgres.outbox_store import PostgresOutbox
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.notifications import SIGNATURE_HEADER, DeliveryFailed, RetryPolicy
from billing.services.notifications import DispatchOutcome, DispatchPolicy, OutboxDispatcher
from billing.settings import get_notification_settings
from local.handlers import LocalLambdaContext, load_handler, load_module
from local.template import load_template
from tests.conftest import load_event
from tests.integration.ledger_support import ledger_on, new_purchase, run_concurrently
from tests.unit.test_notifications import _documented_verifier

SENDER = "billing@vendor.example"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
ONE_USD = 10**9
# new_purchase's triggers: low 3000, critical 2000, termination 1000 nano-USD.
TO_LOW = ONE_USD - 2_500  # leaves 2500: low
TO_SUSPENDED = 1_600  # from 2500 leaves 900: suspended (through critical, one transition)


# ------------------------------------------------------------- the receiver
def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509  # noqa: PLC0415 - test-only dependency (comes with moto)
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outbox test receiver")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "receiver.pem", folder / "receiver.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTPS server on 127.0.0.1 that records requests and answers as scripted (default 200)."""

    base_url: str
    cafile: Path
    requests: list[Received] = field(default_factory=list)
    #: path prefix -> the next answers for requests under it
    script: dict[str, deque[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer_next(self, path: str, *answers: int | tuple[int, dict[str, str], bytes]) -> None:
        queue = self.script.setdefault(path, deque())
        for answer in answers:
            queue.append(answer if isinstance(answer, tuple) else (answer, {}, b"receiver says no"))

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        for prefix, queue in self.script.items():
            if path.startswith(prefix) and queue:
                return queue.popleft()
        return 200, {}, b'{"ok":true}'

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.requests if request.path.startswith(path)]

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    cert, key = _self_signed_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            target = state["receiver"]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with target.lock:
                target.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status, headers, answer = target.answer(self.path)
            time.sleep(target.delay_s)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    state["receiver"] = Receiver(f"https://127.0.0.1:{server.server_address[1]}", cert)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["receiver"]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------- AWS
@dataclass
class Aws:
    box: KmsSecretBox
    key_id: str

    def sent_emails(self) -> list[Any]:
        return list(ses_backends[ACCOUNT_ID][REGION].sent_messages)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        key = boto3.client("kms", region_name=REGION).create_key(Description="app key")["KeyMetadata"]
        boto3.client("sesv2", region_name=REGION).create_email_identity(EmailIdentity=SENDER)
        yield Aws(KmsSecretBox(key["Arn"]), key["KeyId"])


# --------------------------------------------------------------- purchases
@dataclass(frozen=True)
class Customer:
    purchase_id: UUID
    email: str
    webhook_secret: str
    org_key: str
    org_id: str
    officex_purchase_id: str


def _customer(
    db: psycopg.Connection[Any], aws: Aws, receiver: Receiver, *, webhook_url: str | None = None
) -> Customer:
    purchase_id, _, _ = new_purchase(db)
    short = str(purchase_id)[:8]
    customer = Customer(
        purchase_id,
        f"ops-{short}@customer.example",
        f"whsec_{short}-secret",
        f"org-key-{short}",
        f"DriveID_{short}",
        f"PurchaseID_{short}",
    )
    context = {"purchase_id": str(purchase_id)}
    db.execute(
        """UPDATE purchases
              SET notify_email = %s, webhook_url = %s, webhook_secret_ciphertext = %s,
                  customer_org_endpoint = %s, customer_org_id = %s, officex_purchase_id = %s,
                  customer_org_api_key_ciphertext = %s
            WHERE id = %s""",
        (
            customer.email,
            webhook_url or f"{receiver.base_url}/hook/{short}",
            aws.box.encrypt(customer.webhook_secret, {"purpose": "webhook-secret", **context}),
            f"{receiver.base_url}/org",
            customer.org_id,
            customer.officex_purchase_id,
            aws.box.encrypt(customer.org_key, {"purpose": "officex-org-key", **context}),
            purchase_id,
        ),
    )
    ledger_on(db).apply(ledger.credit(purchase_id, ONE_USD, "opening"))
    return customer


def _spend(db: psycopg.Connection[Any], customer: Customer, amount_nano: int, key: str) -> None:
    ledger_on(db).apply(ledger.debit(customer.purchase_id, amount_nano, key))


def _outbox(db: psycopg.Connection[Any], purchase_id: UUID | None = None) -> dict[str, dict[str, Any]]:
    """Rows by dedupe key."""
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        rows = cursor.execute(
            """SELECT id, kind, dedupe_key, attempts, next_attempt_at, last_error, delivered_at, payload,
                      now() AS db_now
                 FROM outbox WHERE %(p)s::uuid IS NULL OR purchase_id = %(p)s ORDER BY id""",
            {"p": purchase_id},
        ).fetchall()
    return {row["dedupe_key"]: row for row in rows}


def _make_due(db: psycopg.Connection[Any]) -> None:
    """Time passes: every pending row's backoff is over."""
    db.execute("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL")


def _dispatcher(
    connection: psycopg.Connection[Any], aws: Aws, receiver: Receiver, *, batch_size: int = 10
) -> OutboxDispatcher:
    return OutboxDispatcher(
        PostgresOutbox(PostgresTransactions(lambda: connection)),
        email=lambda: SesEmailSender(SENDER),
        http=UrllibJsonPoster(timeout_s=2, allow_private_hosts=True, ssl_context=receiver.client_context()),
        secrets=lambda: aws.box,
        policy=DispatchPolicy(batch_size=batch_size),
        jitter=lambda: 0.5,  # half the backoff ceiling, every time
    )


def _run(dispatcher: OutboxDispatcher) -> DispatchOutcome:
    return dispatcher.run(time_left=lambda: timedelta(minutes=2))


def _key(customer: Customer, transition: int, kind: str) -> str:
    return f"status:{customer.purchase_id}:{transition}:{kind}"


# ------------------------------------------------------------------ tests
def test_a_failing_webhook_is_retried_with_backoff_and_delivered_exactly_once(
    db: psycopg.Connection[Any], aws: Aws, receiver: Receiver
) -> None:
    customer = _customer(db, aws, receiver)
    _spend(db, customer, TO_LOW, "usage-1")
    hook = _key(customer, 1, "notify.webhook")
    created = _outbox(db)[hook]
    assert (created["attempts"], created["delivered_at"]) == (0, None)
    receiver.answer_next("/hook/", 500, 500)
    dispatcher = _dispatcher(db, aws, receiver)

    first = _run(dispatcher)

    row = _outbox(db)[hook]
    assert (first.delivered, first.retried) == (2, 1)  # email and OfficeX went out; the webhook did not
    assert row["attempts"] == 1 and row["delivered_at"] is None
    assert row["last_error"] == "HTTP 500: receiver says no"
    waited = row["next_attempt_at"] - row["db_now"]
    assert abs(waited - RetryPolicy().ceiling(1) / 2) < timedelta(seconds=3)  # 15 s of [1 s, 30 s]
    assert row["next_attempt_at"] > created["next_attempt_at"]
    assert _run(dispatcher).retried == 0, "not due yet: the backoff holds it back"

    _make_due(db)
    _run(dispatcher)
    row = _outbox(db)[hook]
    assert (row["attempts"], row["delivered_at"], row["last_error"]) == (
        2,
        None,
        "HTTP 500: receiver says no",
    )
    assert abs(row["next_attempt_at"] - row["db_now"] - RetryPolicy().ceiling(2) / 2) < timedelta(seconds=3)

    _make_due(db)
    recovered = _run(dispatcher)
    for _ in range(2):
        _make_due(db)
        _run(dispatcher)

    row = _outbox(db)[hook]
    assert recovered.delivered == 1
    assert row["attempts"] == 3 and row["delivered_at"] is not None and row["last_error"] is None
    attempts = receiver.to("/hook/")
    assert len(attempts) == 3, "two refusals, one success, nothing after it"
    verify = _documented_verifier()
    for request in attempts:
        assert request.headers["content-type"] == "application/json"
        assert verify(customer.webhook_secret, request.headers[SIGNATURE_HEADER.lower()], request.body)
        assert not verify("whsec_someone-else", request.headers[SIGNATURE_HEADER.lower()], request.body)
    delivered = json.loads(attempts[-1].body)
    assert delivered["id"] == hook
    assert (delivered["from"], delivered["to"], delivered["balance"]) == ("active", "low", "0.000002500")


def test_connection_refused_is_retried_and_the_current_webhook_url_gets_it(
    db: psycopg.Connection[Any], aws: Aws, receiver: Receiver
) -> None:
    customer = _customer(db, aws, receiver, webhook_url=f"https://127.0.0.1:{_closed_port()}/hook/down")
    _spend(db, customer, TO_LOW, "usage-1")
    hook = _key(customer, 1, "notify.webhook")
    dispatcher = _dispatcher(db, aws, receiver)

    _run(dispatcher)

    row = _outbox(db)[hook]
    assert row["attempts"] == 1 and row["delivered_at"] is None
    assert row["last_error"].startswith("network error:") and "refused" in row["last_error"].lower()

    # The customer fixes the URL; the pending row follows it (destinations are read at delivery).
    db.execute(
        "UPDATE purchases SET webhook_url = %s WHERE id = %s",
        (f"{receiver.base_url}/hook/fixed", customer.purchase_id),
    )
    _make_due(db)
    _run(dispatcher)

    ((request,),) = [receiver.to("/hook/fixed")]
    assert json.loads(request.body)["id"] == hook
    assert _outbox(db)[hook]["delivered_at"] is not None


def test_officex_gets_the_mapped_status_with_the_org_key_in_order(
    db: psycopg.Connection[Any], aws: Aws, receiver: Receiver
) -> None:
    customer = _customer(db, aws, receiver)
    _spend(db, customer, TO_LOW, "usage-1")
    receiver.answer_next("/org/", 503)  # the first OfficeX update fails…
    dispatcher = _dispatcher(db, aws, receiver)
    _run(dispatcher)
    _spend(db, customer, TO_SUSPENDED, "usage-2")  # …and a newer one is written meanwhile

    _run(dispatcher)  # the newer one is due, but waits behind the older one (in its backoff)
    assert len(receiver.to("/org/")) == 1
    assert len(receiver.to("/hook/")) == 2, "other kinds of the purchase are not held back"
    _make_due(db)
    _run(dispatcher)  # the older one goes first, then the newer one

    updates = receiver.to("/org/")
    path = f"/org/v1/drive/{customer.org_id}/purchases/update"
    assert [request.path for request in updates] == [path, path, path]
    assert {request.headers["authorization"] for request in updates} == {f"Bearer {customer.org_key}"}
    assert [json.loads(request.body) for request in updates] == [
        {"id": customer.officex_purchase_id, "status": "PAYMENT_REQUIRED"},  # 503
        {"id": customer.officex_purchase_id, "status": "PAYMENT_REQUIRED"},
        {"id": customer.officex_purchase_id, "status": "BLOCKED"},
    ]
    rows = _outbox(db, customer.purchase_id)
    assert rows[_key(customer, 1, "officex.status")]["attempts"] == 2
    assert rows[_key(customer, 2, "officex.status")]["attempts"] == 1
    assert all(
        row["delivered_at"] is not None for row in rows.values() if not row["kind"].startswith("resource.")
    )


def test_emails_go_through_ses_to_the_purchase_address(
    db: psycopg.Connection[Any], aws: Aws, receiver: Receiver
) -> None:
    customer = _customer(db, aws, receiver)
    _spend(db, customer, TO_LOW, "usage-1")
    _spend(db, customer, TO_SUSPENDED, "usage-2")

    outcome = _run(_dispatcher(db, aws, receiver))

    mine = [
        message for message in aws.sent_emails() if message.destinations["ToAddresses"] == [customer.email]
    ]
    assert [message.source for message in mine] == [SENDER, SENDER]
    assert mine[0].subject.startswith("Low balance: please top up")
    assert mine[1].subject.startswith("Service suspended: top up before ")
    assert str(customer.purchase_id) in mine[1].body and "0.000000900 USD" in mine[1].body
    assert outcome.delivered == 6


def test_an_unconfigured_or_refusing_ses_keeps_the_row_for_later(
    db: psycopg.Connection[Any], aws: Aws, receiver: Receiver
) -> None:
    customer = _customer(db, aws, receiver)
    _spend(db, customer, TO_LOW, "usage-1")
    dispatcher = OutboxDispatcher(
        PostgresOutbox(PostgresTransactions(lambda: db)),
        email=lambda: SesEmailSender("not-verified@elsewhere.example"),
        http=UrllibJsonPoster(allow_private_hosts=True, ssl_context=receiver.client_context()),
        secrets=lambda: aws.box,
    )

    _run(dispatcher)

    row = _outbox(db)[_key(customer, 1, "notify.email")]
    assert row["delivered_at"] is None and row["attempts"] == 1
    assert row["last_error"].startswith("SES refused the email: MessageRejected")
    assert aws.sent_emails() == []


def test_resource_rows_are_left_to_provisioning(
    db: psycopg.Connection[Any], aws: Aws, receiver: Receiver
) -> None:
    customer = _customer(db, aws, receiver)
    _spend(db, customer, TO_LOW, "usage-1")
    _spend(db, customer, TO_SUSPENDED, "usage-2")
    before = _outbox(db)[_key(customer, 2, "resource.suspend")]

    for _ in range(3):
        _run(_dispatcher(db, aws, receiver))

    after = _outbox(db)[_key(customer, 2, "resource.suspend")]
    assert {k: after[k] for k in ("attempts", "next_attempt_at", "last_error", "delivered_at")} == {
        "attempts": 0,
        "next_attempt_at": before["next_attempt_at"],
        "last_error": None,
        "delivered_at": None,
    }


@pytest.mark.slow
def test_two_dispatchers_at_once_deliver_every_row_exactly_once(
    db: psycopg.Connection[Any], database_url: str, aws: Aws, receiver: Receiver
) -> None:
    customers = [_customer(db, aws, receiver) for _ in range(6)]
    for customer in customers:
        _spend(db, customer, TO_LOW, "usage-1")
    assert len(_outbox(db)) == 18
    receiver.delay_s = 0.02  # deliveries overlap

    outcomes = run_concurrently(
        database_url, 2, lambda connection, _: _run(_dispatcher(connection, aws, receiver, batch_size=2))
    )

    assert all(outcome.delivered > 0 for outcome in outcomes), "both dispatchers took part"
    assert sum(outcome.delivered for outcome in outcomes) == 18
    assert sum(outcome.retried for outcome in outcomes) == 0
    hooks = sorted(json.loads(request.body)["id"] for request in receiver.to("/hook/"))
    assert hooks == sorted(_key(customer, 1, "notify.webhook") for customer in customers)
    org_calls = sorted(request.path for request in receiver.to("/org/"))
    assert org_calls == sorted(f"/org/v1/drive/{customer.org_id}/purchases/update" for customer in customers)
    recipients = sorted(message.destinations["ToAddresses"][0] for message in aws.sent_emails())
    assert recipients == sorted(customer.email for customer in customers)
    assert {(row["attempts"], row["delivered_at"] is not None) for row in _outbox(db).values()} == {(1, True)}


# ------------------------------------------------------- the HTTP adapter
def test_private_hosts_are_refused_unless_allowed(receiver: Receiver) -> None:
    public_only = UrllibJsonPoster(ssl_context=receiver.client_context())

    with pytest.raises(DeliveryFailed, match="no public address"):
        public_only.post_json(f"{receiver.base_url}/hook/x", b"{}", {})

    assert receiver.requests == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [("http://127.0.0.1/hook", "must be https"), ("https://user:pw@127.0.0.1/hook", "credentials")],
)
def test_plain_http_and_credentials_in_urls_are_refused(receiver: Receiver, url: str, reason: str) -> None:
    poster = UrllibJsonPoster(allow_private_hosts=True, ssl_context=receiver.client_context())

    with pytest.raises(DeliveryFailed, match=reason):
        poster.post_json(url, b"{}", {})


def test_redirects_are_not_followed_and_error_bodies_are_cut(receiver: Receiver) -> None:
    poster = UrllibJsonPoster(allow_private_hosts=True, ssl_context=receiver.client_context())
    receiver.answer_next(
        "/hook/", (307, {"Location": "https://attacker.example/steal"}, b""), (500, {}, b"x" * 100_000)
    )

    with pytest.raises(DeliveryFailed, match=r"HTTP 307: redirect \(to attacker.example\) not followed"):
        poster.post_json(f"{receiver.base_url}/hook/r", b"{}", {})
    with pytest.raises(DeliveryFailed) as failure:
        poster.post_json(f"{receiver.base_url}/hook/r", b"{}", {})

    assert len(receiver.requests) == 2
    assert failure.value.reason.startswith("HTTP 500: xxx") and len(failure.value.reason) <= 500


def test_an_untrusted_certificate_is_a_failure(receiver: Receiver) -> None:
    poster = UrllibJsonPoster(allow_private_hosts=True)  # system trust store: the test CA is unknown

    with pytest.raises(DeliveryFailed, match=r"network error: .*CERTIFICATE_VERIFY_FAILED"):
        poster.post_json(f"{receiver.base_url}/hook/tls", b"{}", {})


# ------------------------------------------------------ the Lambda function
def test_the_scheduled_function_delivers_with_settings_from_the_environment(
    db: psycopg.Connection[Any],
    handler_env: None,
    aws: Aws,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    customer = _customer(db, aws, receiver)
    _spend(db, customer, TO_LOW, "usage-1")
    db.execute("INSERT INTO outbox (kind, dedupe_key, payload) VALUES ('resource.other', 'x', '{}')")
    for name, value in {
        "KMS_KEY_ID": aws.key_id,
        "NOTIFICATION_SENDER": SENDER,
        "OUTBOX_ALLOW_PRIVATE_HOSTS": "true",
        "SSL_CERT_FILE": str(receiver.cafile),  # the default trust store, as Lambda would have it
    }.items():
        monkeypatch.setenv(name, value)
    function = load_template().function_by_folder("outbox_dispatch")
    module = load_module(function)
    caches = (get_notification_settings, module.dispatcher, module._secret_box, module._email_sender)
    for cached in caches:
        cached.cache_clear()
    try:
        result = load_handler(function)(
            load_event("outbox_dispatch_scheduled"), LocalLambdaContext.for_function(function)
        )
    finally:
        for cached in caches:
            cached.cache_clear()

    assert result == {"OutboxDelivered": 3, "OutboxRetried": 0, "OutboxSkipped": 0, "OutboxDeliveryStuck": 0}
    assert len(receiver.to("/hook/")) == 1 and len(receiver.to("/org/")) == 1 and len(aws.sent_emails()) == 1
    assert _outbox(db)["x"]["attempts"] == 0
