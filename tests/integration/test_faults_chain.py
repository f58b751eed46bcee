"""Fault injection, chain RPC: an endpoint that hangs and one that serves another chain.

The in-process dev chain is served over real HTTP JSON-RPC; a small proxy in front of it
injects the fault: ``hang`` answers only after the reader's timeout, ``wrong_chain`` says
``eth_chainId`` is 1 (mainnet) but otherwise relays the dev chain honestly — so if the chain
id were not checked, the deposits it shows *would* be credited. The endpoints are configured
the production way (``RPC_URLS_DEVCHAIN``, read by ``EnvChainReaders``); only the per-request
timeout is shortened from 5 s to keep the tests fast.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from uuid import UUID, uuid4

import psycopg
import pytest

from billing.adapters.chain import readers
from billing.adapters.chain.evm_reader import EvmChainReader
from billing.adapters.chain.readers import EnvChainReaders
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.chains import chain_registry
from billing.domain.checkout import WalletStatus
from billing.domain.errors import DependencyUnavailable
from billing.services.checkout import CheckoutPolicy, CheckoutService, FinalizeRequest
from local.handlers import LocalLambdaContext, load_handler
from local.template import load_template
from tests.conftest import load_event
from tests.integration.checkout_support import CheckoutKit
from tests.integration.ledger_support import assert_ledger_invariants

USDC = 10**6
OFFER = "gemini-api-key"
READER_TIMEOUT_S = 0.5
HANG_S = 3.0
VERIFY = load_template().function_by_folder("checkout_wallet_verify")

Fault = Literal["hang", "wrong_chain"]


@contextmanager
def faulty_rpc(upstream: str, fault: Fault) -> Iterator[str]:
    """A JSON-RPC endpoint relaying ``upstream``, with ``fault`` injected; yields its URL."""

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = json.loads(body)
            if fault == "hang":
                time.sleep(HANG_S)  # longer than the reader waits
            try:
                if fault == "wrong_chain" and request.get("method") == "eth_chainId":
                    answer = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": "0x1"}).encode()
                else:
                    relayed = urllib.request.Request(upstream, body, {"Content-Type": "application/json"})
                    with urllib.request.urlopen(relayed, timeout=10) as response:
                        answer = response.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:
                pass  # the reader gave up waiting (and the test may be over)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def endpoints(checkout_kit: CheckoutKit, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """URLs of the honest, hanging and wrong-chain endpoints; the in-process shortcut is removed."""
    monkeypatch.delitem(readers._IN_PROCESS, checkout_kit.chain.chain_id)
    original = EvmChainReader.from_urls

    def short_timeout(chain_id: int, urls: Any, **kwargs: Any) -> EvmChainReader:
        return original(chain_id, urls, **{**kwargs, "timeout_s": READER_TIMEOUT_S})

    monkeypatch.setattr(EvmChainReader, "from_urls", short_timeout)
    with (
        checkout_kit.chain.serve_json_rpc() as good,
        faulty_rpc(good, "hang") as hang,
        faulty_rpc(good, "wrong_chain") as wrong,
    ):
        yield {"good": good, "hang": hang, "wrong": wrong}


def _service(kit: CheckoutKit, db: psycopg.Connection[Any], rpc_urls: str) -> CheckoutService:
    """The checkout service with ``RPC_URLS_DEVCHAIN=<rpc_urls>``."""
    return CheckoutService(
        PostgresTransactions(lambda: db),
        chains=EnvChainReaders({"RPC_URLS_DEVCHAIN": rpc_urls}),
        addresses=lambda: kit.keys,
        secrets=lambda: kit.box,
        registry=chain_registry,
        policy=CheckoutPolicy(allow_dev_chains=True),
    )


def _paid_wallet(kit: CheckoutKit, db: psycopg.Connection[Any], good: str) -> UUID:
    created = _service(kit, db, good).create_wallet(
        OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
    )
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, 20 * USDC)
    kit.chain.mine(3)
    return created.wallet.id


def _nothing_recorded(db: psycopg.Connection[Any], wallet_id: UUID) -> None:
    assert db.execute("SELECT count(*) FROM deposits").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM purchases").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM ledger_entries").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    assert db.execute(
        "SELECT purchase_id, last_scanned_block FROM checkout_wallets WHERE id = %s", (wallet_id,)
    ).fetchone() == (None, None)


def _finalize_request(wallet_id: UUID) -> FinalizeRequest:
    return FinalizeRequest(
        wallet_id=wallet_id,
        officex_purchase_id="PurchaseID_1",
        customer_org_id="DriveID_1",
        customer_user_id="UserID_1",
    )


def test_finalize_and_top_up_against_a_hanging_or_wrong_chain_rpc_credit_nothing_then_once(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any], endpoints: dict[str, str]
) -> None:
    kit = checkout_kit
    wallet_id = _paid_wallet(kit, db, endpoints["good"])
    for fault, match in (("hang", "did not answer"), ("wrong", "serves chain id 1, not")):
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable, match=match):
            _service(kit, db, endpoints[fault]).finalize(OFFER, _finalize_request(wallet_id), "finalize-1")
        assert time.monotonic() - started < HANG_S, "the reader gave up after its timeout"
        _nothing_recorded(db, wallet_id)

    purchase = _service(kit, db, endpoints["good"]).finalize(
        OFFER, _finalize_request(wallet_id), "finalize-1"
    )

    purchase_id = UUID(purchase.purchase_id)
    assert purchase.balance == "20.000000000"
    assert assert_ledger_invariants(db, purchase_id) == (20 * 10**9, 0)
    assert db.execute("SELECT count(*) FROM ledger_entries").fetchone() == (1,)

    # A top-up seen only through broken endpoints is not credited; through the good one, once.
    row = db.execute("SELECT address FROM checkout_wallets WHERE id = %s", (wallet_id,)).fetchone()
    assert row is not None
    address = row[0]
    kit.chain.pay(kit.usdc(), kit.payer, address, 5 * USDC)
    kit.chain.mine(3)
    for fault in ("hang", "wrong", f"{endpoints['wrong']},{endpoints['good']}"):
        urls = endpoints.get(fault, fault)
        with pytest.raises(DependencyUnavailable):
            _service(kit, db, urls).verify_topup(purchase.purchase_id, purchase.customer_key)
        assert assert_ledger_invariants(db, purchase_id) == (20 * 10**9, 0)
    good = _service(kit, db, endpoints["good"])
    topup = good.verify_topup(purchase.purchase_id, purchase.customer_key)
    again = good.verify_topup(purchase.purchase_id, purchase.customer_key)

    assert [deposit.amount_nano for deposit in topup.wallet.credited_now] == [5 * 10**9]
    assert again.wallet.credited_now == []
    assert assert_ledger_invariants(db, purchase_id) == (25 * 10**9, 0)
    assert db.execute("SELECT count(*) FROM deposits WHERE state = 'credited'").fetchone() == (2,)


def _verify(wallet_id: UUID) -> dict[str, Any]:
    event = load_event("checkout_wallet_verify_pending")
    path = f"/offer/{OFFER}/checkout/wallet/{wallet_id}/verify"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = {"offer_id": OFFER, "wallet_id": str(wallet_id)}
    event["requestContext"]["requestId"] = str(uuid4())
    response: dict[str, Any] = load_handler(VERIFY)(event, LocalLambdaContext.for_function(VERIFY))
    return response


def test_the_verify_handler_answers_503_for_a_bad_rpc_and_falls_back_past_a_hanging_one(
    checkout_kit: CheckoutKit,
    db: psycopg.Connection[Any],
    endpoints: dict[str, str],
    handler_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wallet_id = _paid_wallet(checkout_kit, db, endpoints["good"])
    refused = {
        "hang": endpoints["hang"],
        "wrong": endpoints["wrong"],
        # a misconfigured endpoint is an error to fix, never skipped over to the next one
        "wrong then good": f"{endpoints['wrong']},{endpoints['good']}",
    }
    for case, urls in refused.items():
        monkeypatch.setenv("RPC_URLS_DEVCHAIN", urls)

        response = _verify(wallet_id)

        assert response["statusCode"] == 503, (case, response)
        assert response["headers"]["Content-Type"] == "application/problem+json"
        problem = json.loads(response["body"])
        assert problem["status"] == 503 and problem["detail"].endswith(
            ("try again shortly", "nothing was read")
        ), case
        _nothing_recorded(db, wallet_id)

    monkeypatch.setenv("RPC_URLS_DEVCHAIN", f"{endpoints['hang']},{endpoints['good']}")
    response = _verify(wallet_id)

    assert response["statusCode"] == 200, response
    report = json.loads(response["body"])
    assert report["status"] == WalletStatus.PAID.value
    assert report["confirmed_received"] == "20.000000000"
    assert db.execute("SELECT count(*), min(state) FROM deposits").fetchone() == (1, "confirmed")
