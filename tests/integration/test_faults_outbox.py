"""Fault injection, notifications: SES and a webhook receiver failing, then recovering.

Outbox rows are made the real way (a purchase crossing its low trigger through the ledger),
with the fixtures and helpers of ``test_outbox_dispatch`` (moto SES/KMS, the local HTTPS
receiver). SES raises transport and throttling errors; the webhook endpoint drops the
connection without answering, then answers 500. Each failed row is rescheduled with backoff
and never marked delivered; once the receivers recover, each message is delivered once.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import psycopg
from botocore.exceptions import ClientError, EndpointConnectionError

from billing.adapters.aws.ses import SesEmailSender
from billing.adapters.http_delivery import UrllibJsonPoster
from billing.adapters.postgres.outbox_store import PostgresOutbox
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.notifications import RetryPolicy
from billing.services.notifications import DispatchPolicy, OutboxDispatcher
from tests.integration import test_outbox_dispatch as outbox_tests
from tests.integration.ledger_support import assert_ledger_invariants

# moto SES and KMS, and the local HTTPS receiver (its certificate is reused below)
aws = outbox_tests.aws
receiver = outbox_tests.receiver


class FlakySes:
    """The moto SES client; the next sends raise the queued errors first."""

    def __init__(self, errors: list[Exception]) -> None:
        self._client = boto3.client("sesv2", region_name=outbox_tests.REGION)
        self.errors = errors
        self.calls = 0

    def send_email(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        response: dict[str, Any] = self._client.send_email(**kwargs)
        return response


@contextmanager
def flaky_webhook(receiver: outbox_tests.Receiver, answers: list[str]) -> Iterator[tuple[str, list[bytes]]]:
    """An HTTPS endpoint (the receiver's certificate) that answers as ``answers`` say, then 200.

    ``close``: read the request, then drop the connection without a response; ``500``: a server error.
    """
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            answer = answers.pop(0) if answers else "200"
            if answer == "close":
                self.close_connection = True
                return
            body = b"down for maintenance" if answer == "500" else b"{}"
            self.send_response(int(answer))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(receiver.cafile, Path(receiver.cafile).with_suffix(".key"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def _dispatcher(
    db: psycopg.Connection[Any], aws: outbox_tests.Aws, receiver: outbox_tests.Receiver, ses: FlakySes
) -> OutboxDispatcher:
    return OutboxDispatcher(
        PostgresOutbox(PostgresTransactions(lambda: db)),
        email=lambda: SesEmailSender(outbox_tests.SENDER, client=ses),
        http=UrllibJsonPoster(timeout_s=2, allow_private_hosts=True, ssl_context=receiver.client_context()),
        secrets=lambda: aws.box,
        policy=DispatchPolicy(batch_size=10),
        jitter=lambda: 0.5,
    )


def _pending(db: psycopg.Connection[Any], purchase_id: UUID) -> dict[str, dict[str, Any]]:
    rows = outbox_tests._outbox(db, purchase_id)
    return {row["kind"]: row for row in rows.values() if not row["kind"].startswith("resource.")}


def test_ses_and_webhook_failures_are_rescheduled_with_backoff_and_delivered_once_on_recovery(
    db: psycopg.Connection[Any], aws: outbox_tests.Aws, receiver: outbox_tests.Receiver
) -> None:
    ses = FlakySes(
        [
            EndpointConnectionError(
                endpoint_url="https://email.us-east-1.amazonaws.com/v2/email/outbound-emails"
            ),
            ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}}, "SendEmail"),
        ]
    )
    with flaky_webhook(receiver, ["close", "500"]) as (hook_url, hook_requests):
        customer = outbox_tests._customer(db, aws, receiver, webhook_url=hook_url)
        outbox_tests._spend(db, customer, outbox_tests.TO_LOW, "usage-1")
        dispatcher = _dispatcher(db, aws, receiver, ses)
        expected_errors = [
            ("SES is unreachable (EndpointConnectionError)", "network error:"),
            ("SES refused the email: TooManyRequestsException: slow down", "HTTP 500: down for maintenance"),
        ]

        for attempt, (email_error, hook_error) in enumerate(expected_errors, start=1):
            outcome = outbox_tests._run(dispatcher)

            rows = _pending(db, customer.purchase_id)
            assert outcome.retried == 2
            for kind, error in (("notify.email", email_error), ("notify.webhook", hook_error)):
                row = rows[kind]
                assert (row["attempts"], row["delivered_at"]) == (attempt, None), kind
                assert row["last_error"].startswith(error), row["last_error"]
                waited = row["next_attempt_at"] - row["db_now"]
                assert abs(waited - RetryPolicy().ceiling(attempt) / 2) < timedelta(seconds=3), kind
            assert outbox_tests._run(dispatcher).retried == 0, "held back until the backoff is over"
            outbox_tests._make_due(db)

        recovered = outbox_tests._run(dispatcher)
        for _ in range(2):  # later runs find nothing more to send
            outbox_tests._make_due(db)
            outbox_tests._run(dispatcher)

        rows = _pending(db, customer.purchase_id)
        assert recovered.delivered == 2 and recovered.retried == 0
        for kind in ("notify.email", "notify.webhook"):
            assert rows[kind]["attempts"] == 3 and rows[kind]["delivered_at"] is not None
            assert rows[kind]["last_error"] is None
        assert rows["officex.status"]["attempts"] == 1, "the healthy channel was never held back"
        assert ses.calls == 3 and len(hook_requests) == 3
        sent = [m for m in aws.sent_emails() if m.destinations["ToAddresses"] == [customer.email]]
        assert len(sent) == 1 and sent[0].subject.startswith("Low balance")
        ids = {json.loads(body)["id"] for body in hook_requests}
        assert ids == {outbox_tests._key(customer, 1, "notify.webhook")}, (
            "the same message id on every attempt"
        )
        assert_ledger_invariants(db, customer.purchase_id)


def test_a_webhook_that_hangs_past_the_timeout_is_retried_not_delivered(
    db: psycopg.Connection[Any], aws: outbox_tests.Aws, receiver: outbox_tests.Receiver
) -> None:
    customer = outbox_tests._customer(db, aws, receiver)
    outbox_tests._spend(db, customer, outbox_tests.TO_LOW, "usage-1")
    dispatcher = OutboxDispatcher(
        PostgresOutbox(PostgresTransactions(lambda: db)),
        email=lambda: SesEmailSender(outbox_tests.SENDER),
        http=UrllibJsonPoster(timeout_s=0.3, allow_private_hosts=True, ssl_context=receiver.client_context()),
        secrets=lambda: aws.box,
        jitter=lambda: 0.5,
    )
    receiver.delay_s = 1.0  # answers 200, but too late

    first = outbox_tests._run(dispatcher)

    rows = _pending(db, customer.purchase_id)
    assert first.delivered == 1 and first.retried == 2  # the email went; the webhook and OfficeX timed out
    for kind in ("notify.webhook", "officex.status"):
        assert rows[kind]["delivered_at"] is None and rows[kind]["last_error"].startswith("network error:")
    receiver.delay_s = 0.0
    outbox_tests._make_due(db)
    recovered = outbox_tests._run(dispatcher)

    assert recovered.delivered == 2
    assert all(row["delivered_at"] is not None for row in _pending(db, customer.purchase_id).values())
