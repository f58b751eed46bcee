"""Checkout on an in-process chain: pay, confirm, finalize, top up — each transfer credited once."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from billing.adapters.chain.readers import EnvChainReaders
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.api_keys import KeyRole, generate_api_key
from billing.domain.chains import Chain, chain_registry
from billing.domain.checkout import WalletStatus
from billing.domain.errors import (
    DependencyUnavailable,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    StateConflict,
)
from billing.services.checkout import CheckoutPolicy, CheckoutService, FinalizeRequest
from billing.services.ports import ChainReader
from tests.integration.checkout_support import CheckoutKit
from tests.integration.ledger_support import assert_ledger_invariants, run_concurrently

USDC = 10**6  # base units per USDC
OFFER = "gemini-api-key"


def _finalize_request(wallet_id: Any, **extra: Any) -> FinalizeRequest:
    return FinalizeRequest(
        wallet_id=wallet_id,
        officex_purchase_id="PurchaseID_1",
        customer_org_id="DriveID_1",
        customer_user_id="UserID_1",
        **extra,
    )


def _paid_wallet(kit: CheckoutKit, amount_units: int = 20 * USDC) -> Any:
    created = kit.service.create_wallet(
        OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
    )
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, amount_units)
    kit.chain.mine(3)
    return created.wallet


def test_create_pay_confirm_finalize_and_top_up(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    created = kit.service.create_wallet(
        OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
    )
    wallet = created.wallet
    assert created.min_target_units == 20 * USDC
    assert created.payment_uri == (
        f"ethereum:{kit.usdc()}@{kit.chain.chain_id}/transfer?address={wallet.address}&uint256={20 * USDC}"
    )
    assert wallet.address == kit.keys.address_at(wallet.hd_index)

    kit.chain.pay(kit.usdc(), kit.payer, wallet.address, 10 * USDC)
    half = kit.service.verify(OFFER, wallet.id)
    assert half.status is WalletStatus.PARTIALLY_PAID
    assert (half.progress.confirmed_nano, half.progress.pending_nano) == (0, 10 * 10**9)

    kit.chain.pay(kit.usdc(), kit.payer, wallet.address, 10 * USDC)
    unconfirmed = kit.service.verify(OFFER, wallet.id)
    assert unconfirmed.status is WalletStatus.PARTIALLY_PAID  # paid in full, but not deep enough
    with pytest.raises(InsufficientFunds):
        kit.service.finalize(OFFER, _finalize_request(wallet.id), None)

    kit.chain.mine(2)
    paid = kit.service.verify(OFFER, wallet.id)
    assert paid.status is WalletStatus.PAID and paid.progress.remaining_nano == 0

    purchase = kit.service.finalize(OFFER, _finalize_request(wallet.id), None)
    assert purchase.balance == "20.000000000"
    assert purchase.customer_key.startswith("ck_") and purchase.vendor_key.startswith("vk_")
    with pytest.raises(StateConflict):
        kit.service.finalize(OFFER, _finalize_request(wallet.id), None)
    assert kit.service.verify(OFFER, wallet.id).status is WalletStatus.FINALIZED

    kit.chain.pay(kit.usdc(), kit.payer, wallet.address, 5 * USDC)
    kit.chain.mine(3)
    topup = kit.service.verify_topup(purchase.purchase_id, purchase.customer_key)
    assert [deposit.amount_nano for deposit in topup.wallet.credited_now] == [5 * 10**9]
    assert topup.purchase.balance_nano == 25 * 10**9
    again = kit.service.verify_topup(purchase.purchase_id, purchase.customer_key)
    assert again.wallet.credited_now == [] and again.purchase.balance_nano == 25 * 10**9
    assert assert_ledger_invariants(db, topup.purchase.id) == (25 * 10**9, 0)


def test_a_reorged_payment_is_never_credited(checkout_kit: CheckoutKit) -> None:
    kit = checkout_kit
    created = kit.service.create_wallet(
        OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
    )
    before_payment = kit.chain.snapshot()
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, 20 * USDC)
    seen = kit.service.verify(OFFER, created.wallet.id)
    assert seen.progress.pending_nano == 20 * 10**9
    kit.chain.revert(before_payment)
    kit.chain.mine(5)
    after = kit.service.verify(OFFER, created.wallet.id)
    assert after.status is WalletStatus.AWAITING_PAYMENT
    assert [deposit.state.value for deposit in after.deposits] == ["reorged"]
    with pytest.raises(InsufficientFunds):
        kit.service.finalize(OFFER, _finalize_request(created.wallet.id), None)


def test_fake_token_with_the_same_symbol_is_ignored(checkout_kit: CheckoutKit) -> None:
    kit = checkout_kit
    fake_usdc = kit.chain.deploy_usdc()
    kit.chain.mint(fake_usdc, kit.payer, 100 * USDC)
    created = kit.service.create_wallet(
        OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
    )
    kit.chain.pay(fake_usdc, kit.payer, created.wallet.address, 50 * USDC)
    kit.chain.mine(3)
    report = kit.service.verify(OFFER, created.wallet.id)
    assert report.deposits == [] and report.status is WalletStatus.AWAITING_PAYMENT


def test_usdt_without_return_value_pays_too(checkout_kit: CheckoutKit) -> None:
    kit = checkout_kit
    created = kit.service.create_wallet(
        OFFER, chain="devchain", token="USDT", min_target_nano=None, customer={}
    )
    kit.chain.pay(kit.usdt(), kit.payer, created.wallet.address, 20 * USDC)
    kit.chain.mine(3)
    assert kit.service.verify(OFFER, created.wallet.id).status is WalletStatus.PAID


def test_ten_concurrent_finalizes_create_one_purchase(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any], database_url: str
) -> None:
    kit = checkout_kit
    wallet = _paid_wallet(kit)
    kit.service.verify(OFFER, wallet.id)
    outcomes: list[str] = []
    lock = threading.Lock()

    def finalize(connection: psycopg.Connection[Any], index: int) -> None:
        key = "same-key" if index % 2 == 0 else None
        try:
            purchase = kit.service_on(connection).finalize(OFFER, _finalize_request(wallet.id), key)
            outcome = f"{purchase.purchase_id}:{purchase.customer_key}"
        except StateConflict:
            outcome = "409"
        with lock:
            outcomes.append(outcome)

    run_concurrently(database_url, 10, finalize)
    purchases = {outcome for outcome in outcomes if outcome != "409"}
    assert len(purchases) == 1, outcomes
    assert db.execute("SELECT count(*) FROM purchases").fetchone() == (1,)


def test_idempotency_key_replays_the_same_answer_and_refuses_another_body(checkout_kit: CheckoutKit) -> None:
    kit = checkout_kit
    wallet = _paid_wallet(kit)
    first = kit.service.finalize(OFFER, _finalize_request(wallet.id), "retry-me")
    replay = kit.service.finalize(OFFER, _finalize_request(wallet.id), "retry-me")
    assert replay.replayed and (replay.purchase_id, replay.customer_key, replay.vendor_key) == (
        first.purchase_id,
        first.customer_key,
        first.vendor_key,
    )
    other = _finalize_request(wallet.id, customer_org_endpoint="https://org.example/")
    with pytest.raises(IdempotencyConflict):
        kit.service.finalize(OFFER, other, "retry-me")


def test_twenty_concurrent_topup_checks_credit_once(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any], database_url: str
) -> None:
    kit = checkout_kit
    wallet = _paid_wallet(kit)
    purchase = kit.service.finalize(OFFER, _finalize_request(wallet.id), None)
    kit.chain.pay(kit.usdc(), kit.payer, wallet.address, 7 * USDC)
    kit.chain.mine(3)

    def check(connection: psycopg.Connection[Any], _: int) -> int:
        report = kit.service_on(connection).verify_topup(purchase.purchase_id, purchase.customer_key)
        return len(report.wallet.credited_now)

    assert sum(run_concurrently(database_url, 20, check)) == 1
    rows = db.execute("SELECT count(*) FROM ledger_entries WHERE kind = 'deposit'").fetchone()
    assert rows == (2,)
    assert assert_ledger_invariants(db, UUID(purchase.purchase_id)) == (27 * 10**9, 0)


def test_no_key_or_secret_is_stored_in_clear(checkout_kit: CheckoutKit, db: psycopg.Connection[Any]) -> None:
    kit = checkout_kit
    wallet = _paid_wallet(kit)
    org_key = "officex-org-secret-0123456789"
    purchase = kit.service.finalize(
        OFFER, _finalize_request(wallet.id, customer_org_api_key=org_key), "with-replay"
    )
    dump = "\n".join(
        str(row)
        for table in ("purchases", "checkout_wallets", "deposits", "ledger_entries", "finalize_replays")
        for row in db.execute(f"SELECT * FROM {table}").fetchall()
    )
    for secret in (purchase.customer_key, purchase.vendor_key, org_key, kit.keys.private_key_at(0).hex()):
        assert secret not in dump


def test_bad_requests_and_rpc_outage_write_nothing(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    with pytest.raises(InvalidRequest, match="accepts"):
        kit.service.create_wallet(OFFER, chain="base", token="USDT", min_target_nano=None, customer={})
    with pytest.raises(InvalidRequest, match="minimum deposit"):
        kit.service.create_wallet(OFFER, chain="devchain", token="USDC", min_target_nano=10**9, customer={})

    class DownChains:
        def reader_for(self, chain: Chain) -> ChainReader:
            raise DependencyUnavailable("the RPC did not answer")

    def service(policy: CheckoutPolicy) -> CheckoutService:
        return CheckoutService(
            PostgresTransactions(lambda: db),
            chains=DownChains(),
            addresses=lambda: kit.keys,
            secrets=lambda: pytest.fail("no encryption expected"),
            registry=chain_registry,
            policy=policy,
        )

    with pytest.raises(DependencyUnavailable):
        service(CheckoutPolicy(allow_dev_chains=True)).create_wallet(
            OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
        )
    assert db.execute("SELECT count(*) FROM checkout_wallets").fetchone() == (0,)
    with pytest.raises(InvalidRequest, match="development chain"):
        service(CheckoutPolicy()).create_wallet(
            OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
        )


def test_the_scheduled_scan_credits_top_ups_without_any_call(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    wallet = _paid_wallet(kit)
    purchase = kit.service.finalize(OFFER, _finalize_request(wallet.id), None)
    kit.chain.pay(kit.usdc(), kit.payer, wallet.address, 3 * USDC)
    kit.chain.mine(3)
    devchain = chain_registry().chain("devchain")
    assert kit.service.scan_topups(devchain) == 1
    assert kit.service.scan_topups(devchain) == 0
    assert assert_ledger_invariants(db, UUID(purchase.purchase_id)) == (23 * 10**9, 0)


def test_late_payment_after_expiry_is_recorded_and_honoured(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    expired_at_once = CheckoutService(
        PostgresTransactions(lambda: db),
        chains=EnvChainReaders({}),
        addresses=lambda: kit.keys,
        secrets=lambda: kit.box,
        registry=chain_registry,
        policy=CheckoutPolicy(wallet_ttl=timedelta(0), allow_dev_chains=True),
    )
    created = expired_at_once.create_wallet(
        OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
    )
    assert expired_at_once.verify(OFFER, created.wallet.id).status is WalletStatus.EXPIRED
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, 5 * USDC)
    kit.chain.mine(3)
    partly = expired_at_once.verify(OFFER, created.wallet.id)
    assert partly.status is WalletStatus.EXPIRED and partly.progress.confirmed_nano == 5 * 10**9  # recorded
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, 15 * USDC)
    kit.chain.mine(3)
    assert expired_at_once.verify(OFFER, created.wallet.id).status is WalletStatus.PAID
    purchase = expired_at_once.finalize(OFFER, _finalize_request(created.wallet.id), None)
    assert purchase.balance == "20.000000000"


def test_supplied_keys_need_full_entropy(checkout_kit: CheckoutKit) -> None:
    kit = checkout_kit
    wallet = _paid_wallet(kit)
    with pytest.raises(InvalidRequest, match="43 base64url"):
        kit.service.finalize(OFFER, _finalize_request(wallet.id, customer_key="ck_password123"), None)
    with pytest.raises(InvalidRequest, match="not random enough"):
        kit.service.finalize(OFFER, _finalize_request(wallet.id, vendor_key="vk_" + "a" * 43), None)
    strong = generate_api_key(KeyRole.CUSTOMER)
    purchase = kit.service.finalize(OFFER, _finalize_request(wallet.id, customer_key=strong), None)
    assert purchase.customer_key == strong and purchase.vendor_key.startswith("vk_")


def test_balance_of_is_a_reconciliation_check_never_a_credit(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    created = kit.service.create_wallet(
        OFFER, chain="devchain", token="USDC", min_target_nano=None, customer={}
    )
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, 20 * USDC)
    kit.chain.mine(3)
    report = kit.service.verify(OFFER, created.wallet.id)
    assert report.reconciled and report.on_chain_balance_units == 20 * USDC
    # A sweep recorded as sent whose transaction never landed: the books say 15 left, the chain says 20.
    db.execute(
        """INSERT INTO sweeps (id, wallet_id, chain_id, token_address, from_address, to_address, method,
                               amount_units, topup_tx_hash, tx_hash, status)
           VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, 'gas_topup', %s, '0x01', '0x02', 'submitted')""",
        (created.wallet.id, kit.chain.chain_id, kit.usdc(), created.wallet.address, kit.payer, 5 * USDC),
    )
    mismatch = kit.service.verify(OFFER, created.wallet.id)
    assert not mismatch.reconciled and mismatch.on_chain_balance_units == 20 * USDC
    assert mismatch.progress.confirmed_nano == 20 * 10**9  # credits still come from Transfer logs only


def test_finalize_sets_up_notifications_and_the_offer_grace_period(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    created = kit.service.create_wallet(
        OFFER,
        chain="devchain",
        token="USDC",
        min_target_nano=None,
        customer={"email": "pay@customer.example"},
    )
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, 20 * USDC)
    kit.chain.mine(3)
    hook = "https://hooks.customer.example/billing"

    purchase = kit.service.finalize(OFFER, _finalize_request(created.wallet.id, webhook_url=hook), None)

    assert purchase.webhook_secret is not None and purchase.webhook_secret.startswith("whsec_")
    email, url, ciphertext, grace = db.execute(
        """SELECT notify_email, webhook_url, webhook_secret_ciphertext, grace_period
             FROM purchases WHERE id = %s""",
        (UUID(purchase.purchase_id),),
    ).fetchone() or (None, None, None, None)
    assert (email, url, grace) == ("pay@customer.example", hook, timedelta(hours=24))  # gemini offer: 24 h
    context = {"purpose": "webhook-secret", "purchase_id": purchase.purchase_id}
    assert kit.box.decrypt(bytes(ciphertext), context) == purchase.webhook_secret
    assert purchase.webhook_secret.encode() not in bytes(ciphertext)

    other = _paid_wallet(kit)
    quiet = kit.service.finalize(
        OFFER, _finalize_request(other.id, notification_email="billing@customer.example"), None
    )
    assert quiet.webhook_secret is None
    assert db.execute(
        "SELECT notify_email, webhook_url FROM purchases WHERE id = %s", (UUID(quiet.purchase_id),)
    ).fetchone() == ("billing@customer.example", None)
