"""Sweeping deposits to the offramp on the in-process chain: USDC gasless, USDT with a gas top-up."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import boto3
import psycopg
import pytest
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from eth_account import Account
from pydantic import ValidationError

from billing.adapters.chain.evm_sender import EvmSweepSender
from billing.adapters.chain.readers import EnvChainReaders
from billing.adapters.postgres.sweep_store import PostgresSweepStore, PostgresSweepTransactions
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.chains import Chain, chain_registry
from billing.domain.checkout import Wallet
from billing.domain.sweeping import (
    SweepMethod,
    SweepPolicy,
    SweepStatus,
    min_sweep_units,
    plan_gas_topup,
    sweep_method,
    worth_sweeping,
)
from billing.services.checkout import FinalizedPurchase, FinalizeRequest
from billing.services.sweeper import Sweeper
from local.chain import TEST_MNEMONIC
from local.handlers import LocalLambdaContext, load_handler
from local.template import load_template
from tests.conftest import load_event
from tests.integration.checkout_support import CheckoutKit
from tests.integration.ledger_support import run_concurrently

USDC = 10**6
OFFER = "gemini-api-key"
TEMPLATE = load_template()


@dataclass(frozen=True)
class Paid:
    wallet: Wallet
    purchase_id: UUID
    amount_units: int
    finalized: FinalizedPurchase


class OneSender:
    def __init__(self, sender: EvmSweepSender) -> None:
        self._sender = sender

    def sender_for(self, chain: Chain) -> EvmSweepSender:
        return self._sender


def _paid_and_finalized(kit: CheckoutKit, token: str, amount_units: int = 20 * USDC) -> Paid:
    created = kit.service.create_wallet(
        OFFER, chain="devchain", token=token, min_target_nano=None, customer={}
    )
    token_address = kit.usdc() if token == "USDC" else kit.usdt()
    kit.chain.pay(token_address, kit.payer, created.wallet.address, amount_units)
    kit.chain.mine(3)
    purchase = kit.service.finalize(
        OFFER,
        FinalizeRequest(
            wallet_id=created.wallet.id,
            officex_purchase_id="PurchaseID_1",
            customer_org_id="DriveID_1",
            customer_user_id="UserID_1",
        ),
        None,
    )
    return Paid(created.wallet, UUID(purchase.purchase_id), amount_units, purchase)


def _ledger_snapshot(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        """SELECT p.id, p.balance_nano, p.held_nano, count(e.id)
             FROM purchases p LEFT JOIN ledger_entries e ON e.purchase_id = p.id
            GROUP BY p.id ORDER BY p.id"""
    ).fetchall()


@dataclass
class SweepKit:
    kit: CheckoutKit
    treasury: str
    treasury_key: bytes
    offramp: str

    def sweeper_on(
        self, connection: psycopg.Connection[Any], *, treasury_key: bytes | None = None
    ) -> Sweeper:
        sender = EvmSweepSender(self.kit.chain.web3, self.kit.chain.chain_id, poll_interval_s=0.01)
        return Sweeper(
            PostgresSweepTransactions(PostgresTransactions(lambda: connection)),
            readers=EnvChainReaders({}),
            senders=OneSender(sender),
            keys=self.kit.keys,
            treasury_key=treasury_key or self.treasury_key,
            offramp_address=self.offramp,
            registry=chain_registry,
            policy=SweepPolicy(receipt_timeout_s=10),
        )

    def eth(self, address: str) -> int:
        return int(self.kit.chain.web3.eth.get_balance(self.kit.chain.web3.to_checksum_address(address)))

    def sent_count(self, address: str) -> int:
        return int(
            self.kit.chain.web3.eth.get_transaction_count(self.kit.chain.web3.to_checksum_address(address))
        )


@pytest.fixture
def sweep_kit(checkout_kit: CheckoutKit) -> SweepKit:
    treasury = checkout_kit.chain.accounts[2]
    return SweepKit(
        checkout_kit, treasury, checkout_kit.chain.private_key(treasury), Account.create().address
    )


def test_usdc_moves_gaslessly_and_usdt_with_a_gas_top_up(
    sweep_kit: SweepKit, db: psycopg.Connection[Any]
) -> None:
    kit = sweep_kit.kit
    usdc = _paid_and_finalized(kit, "USDC", 20 * USDC)
    usdt = _paid_and_finalized(kit, "USDT", 25 * USDC)
    ledger_before = _ledger_snapshot(db)
    treasury_eth_before = sweep_kit.eth(sweep_kit.treasury)

    report = sweep_kit.sweeper_on(db).sweep_chain("devchain")

    assert (report.confirmed, report.failed, report.awaiting_receipt) == (2, 0, 0), db.execute(
        "SELECT method, error FROM sweeps"
    ).fetchall()
    assert report.swept_units == {"USDC": 20 * USDC, "USDT": 25 * USDC}
    assert kit.chain.balance_of(kit.usdc(), sweep_kit.offramp) == 20 * USDC
    assert kit.chain.balance_of(kit.usdt(), sweep_kit.offramp) == 25 * USDC
    assert kit.chain.balance_of(kit.usdc(), usdc.wallet.address) == 0
    assert kit.chain.balance_of(kit.usdt(), usdt.wallet.address) == 0
    # USDC: the deposit address never held or spent ETH and sent no transaction itself.
    assert (sweep_kit.eth(usdc.wallet.address), sweep_kit.sent_count(usdc.wallet.address)) == (0, 0)
    # USDT: the deposit address sent its own transfer, paid for with the treasury's top-up.
    assert sweep_kit.sent_count(usdt.wallet.address) == 1

    store = PostgresSweepStore(db)
    [usdc_sweep] = store.sweeps_of_wallet(usdc.wallet.id)
    [usdt_sweep] = store.sweeps_of_wallet(usdt.wallet.id)
    assert usdc_sweep.method is SweepMethod.EIP3009 and usdc_sweep.status is SweepStatus.CONFIRMED
    assert usdc_sweep.authorization_nonce is not None and len(usdc_sweep.authorization_nonce) == 32
    assert usdc_sweep.topup_tx_hash is None and usdc_sweep.gas_spent_wei > 0
    assert usdt_sweep.method is SweepMethod.GAS_TOPUP and usdt_sweep.status is SweepStatus.CONFIRMED
    assert usdt_sweep.topup_tx_hash is not None and usdt_sweep.authorization_nonce is None
    assert usdt_sweep.amount_units == 25 * USDC and usdt_sweep.to_address == sweep_kit.offramp
    topup_wei = db.execute("SELECT topup_wei FROM sweeps WHERE id = %s", (usdt_sweep.id,)).fetchone()
    assert topup_wei is not None and int(topup_wei[0]) > 0
    # The treasury paid the USDC sweep's gas, the top-up's gas and the top-up itself; the USDT
    # deposit address burnt part of the top-up on its transfer and keeps the rest.
    treasury_spent = treasury_eth_before - sweep_kit.eth(sweep_kit.treasury)
    left_on_deposit = sweep_kit.eth(usdt.wallet.address)
    assert 0 <= left_on_deposit < int(topup_wei[0])
    assert treasury_spent == usdc_sweep.gas_spent_wei + usdt_sweep.gas_spent_wei + left_on_deposit
    assert report.gas_spent_wei == usdc_sweep.gas_spent_wei + usdt_sweep.gas_spent_wei

    assert _ledger_snapshot(db) == ledger_before  # sweeping never touches balances

    again = sweep_kit.sweeper_on(db).sweep_chain("devchain")
    assert (again.confirmed, again.failed, again.below_dust) == (0, 0, 2)
    assert db.execute("SELECT count(*) FROM sweeps").fetchone() == (2,)
    assert _ledger_snapshot(db) == ledger_before


def test_two_sweepers_at_once_sweep_each_wallet_once(
    sweep_kit: SweepKit, db: psycopg.Connection[Any], database_url: str
) -> None:
    kit = sweep_kit.kit
    paid = [
        _paid_and_finalized(kit, "USDC", 20 * USDC),
        _paid_and_finalized(kit, "USDT", 30 * USDC),
        _paid_and_finalized(kit, "USDC", 40 * USDC),
    ]
    ledger_before = _ledger_snapshot(db)

    reports = run_concurrently(
        database_url, 2, lambda connection, _: sweep_kit.sweeper_on(connection).sweep_chain("devchain")
    )

    assert sum(report.confirmed for report in reports) == 3
    assert sum(report.failed for report in reports) == 0
    assert kit.chain.balance_of(kit.usdc(), sweep_kit.offramp) == 60 * USDC
    assert kit.chain.balance_of(kit.usdt(), sweep_kit.offramp) == 30 * USDC
    store = PostgresSweepStore(db)
    for wallet in paid:
        assert [sweep.status for sweep in store.sweeps_of_wallet(wallet.wallet.id)] == [SweepStatus.CONFIRMED]
    assert _ledger_snapshot(db) == ledger_before


def test_dust_stays_and_a_failed_sweep_is_retried_by_the_next_run(
    sweep_kit: SweepKit, db: psycopg.Connection[Any]
) -> None:
    kit = sweep_kit.kit
    paid = _paid_and_finalized(kit, "USDC", 20 * USDC)
    broke_treasury = bytes(Account.create().key)  # no ETH: cannot pay the gas

    failed = sweep_kit.sweeper_on(db, treasury_key=broke_treasury).sweep_chain("devchain")
    assert (failed.confirmed, failed.failed) == (0, 1)
    [first] = PostgresSweepStore(db).sweeps_of_wallet(paid.wallet.id)
    assert first.status is SweepStatus.FAILED and first.error is not None
    assert broke_treasury.hex() not in first.error and "http" not in first.error
    assert kit.chain.balance_of(kit.usdc(), paid.wallet.address) == 20 * USDC  # nothing moved

    retried = sweep_kit.sweeper_on(db).sweep_chain("devchain")
    assert retried.confirmed == 1
    assert kit.chain.balance_of(kit.usdc(), sweep_kit.offramp) == 20 * USDC

    kit.chain.pay(kit.usdc(), kit.payer, paid.wallet.address, USDC // 2)  # 0.50 USD: below the dust threshold
    dust = sweep_kit.sweeper_on(db).sweep_chain("devchain")
    assert (dust.below_dust, dust.confirmed) == (1, 0)
    statuses = [sweep.status for sweep in PostgresSweepStore(db).sweeps_of_wallet(paid.wallet.id)]
    assert statuses == [SweepStatus.FAILED, SweepStatus.CONFIRMED]


def test_an_open_sweep_blocks_a_second_one_in_the_database(
    sweep_kit: SweepKit, db: psycopg.Connection[Any]
) -> None:
    paid = _paid_and_finalized(sweep_kit.kit, "USDT", 20 * USDC)
    insert = """INSERT INTO sweeps (id, wallet_id, chain_id, token_address, from_address, to_address, method,
                                    amount_units)
                VALUES (gen_random_uuid(), %s, 1, %s, 'a', 'b', 'gas_topup', 1)"""
    db.execute(insert, (paid.wallet.id, paid.wallet.token_address))
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(insert, (paid.wallet.id, paid.wallet.token_address))
    db.execute("UPDATE sweeps SET status = 'failed'")
    db.execute(insert, (paid.wallet.id, paid.wallet.token_address))  # a closed sweep frees the slot


def test_an_abandoned_claim_is_failed_and_the_wallet_swept(
    sweep_kit: SweepKit, db: psycopg.Connection[Any]
) -> None:
    kit = sweep_kit.kit
    paid = _paid_and_finalized(kit, "USDT", 20 * USDC)
    db.execute(
        """INSERT INTO sweeps (id, wallet_id, chain_id, token_address, from_address, to_address, method,
                               amount_units, updated_at)
           VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, 'gas_topup', 1, now() - interval '1 hour')""",
        (
            paid.wallet.id,
            kit.chain.chain_id,
            paid.wallet.token_address,
            paid.wallet.address,
            sweep_kit.offramp,
        ),
    )

    report = sweep_kit.sweeper_on(db).sweep_chain("devchain")

    assert (report.abandoned, report.confirmed) == (1, 1)
    statuses = [sweep.status for sweep in PostgresSweepStore(db).sweeps_of_wallet(paid.wallet.id)]
    assert statuses == [SweepStatus.FAILED, SweepStatus.CONFIRMED]
    assert kit.chain.balance_of(kit.usdt(), sweep_kit.offramp) == 20 * USDC


def test_sweeping_rules() -> None:
    policy = SweepPolicy()
    assert sweep_method("USDC") is SweepMethod.EIP3009 and sweep_method("USDT") is SweepMethod.GAS_TOPUP
    assert (
        min_sweep_units(10**9, 6) == 10**6
        and min_sweep_units(1, 6) == 1
        and min_sweep_units(10**9, 18) == 10**18
    )
    assert not worth_sweeping(10**6 - 1, 6, policy) and worth_sweeping(10**6, 6, policy)
    assert not worth_sweeping(0, 6, SweepPolicy(dust_threshold_nano=0))
    plan = plan_gas_topup(65_509, 1_000_000_001, 0, policy)
    assert plan.gas_limit == 98_264  # ceil(65_509 × 1.5)
    assert plan.gas_price_wei == 1_250_000_002  # ceil(1_000_000_001 × 1.25)
    assert plan.topup_wei == plan.max_fee_wei == 98_264 * 1_250_000_002
    assert plan_gas_topup(65_509, 10**9, 10**18, policy).topup_wei == 0  # already holds enough ETH
    with pytest.raises(ValueError, match="percentages"):
        SweepPolicy(gas_safety_percent=90)


def test_no_key_reaches_a_repr(sweep_kit: SweepKit, db: psycopg.Connection[Any]) -> None:
    sweeper = sweep_kit.sweeper_on(db)
    sender = EvmSweepSender(sweep_kit.kit.chain.web3, sweep_kit.kit.chain.chain_id)
    for text in (repr(sweeper), repr(sender), repr(sweep_kit.kit.keys)):
        assert sweep_kit.treasury_key.hex() not in text
        assert sweep_kit.kit.keys.private_key_at(0).hex() not in text


def test_chain_sweep_function_reads_its_keys_from_secrets_manager(
    sweep_kit: SweepKit, db: psycopg.Connection[Any], handler_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = sweep_kit.kit
    usdc = _paid_and_finalized(kit, "USDC", 20 * USDC)
    usdt = _paid_and_finalized(kit, "USDT", 30 * USDC)
    ledger_before = _ledger_snapshot(db)
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    seed_arn = secrets.create_secret(Name="hd-seed", SecretString=json.dumps({"mnemonic": TEST_MNEMONIC}))[
        "ARN"
    ]
    treasury_arn = secrets.create_secret(
        Name="treasury", SecretString=json.dumps({"private_key": "0x" + sweep_kit.treasury_key.hex()})
    )["ARN"]
    DEFAULT_PROVIDERS.clear()  # a provider cached by another test has a client outside moto
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("HD_SEED_SECRET_ARN", seed_arn)
    monkeypatch.setenv("TREASURY_KEY_SECRET_ARN", treasury_arn)
    monkeypatch.setenv("OFFRAMP_ADDRESS", sweep_kit.offramp)
    event = {**load_event("chain_sweep_base"), "chain": "devchain"}  # base itself needs a real RPC

    with kit.chain.serve_json_rpc() as rpc_url:
        monkeypatch.setenv("RPC_URLS_DEVCHAIN", rpc_url)
        first = _invoke("chain_sweep", event)
        second = _invoke("chain_sweep", event)

    assert first["sweeps_confirmed"] == 2 and first["sweeps_failed"] == 0, first
    assert second["sweeps_confirmed"] == 0 and second["sweeps_below_dust"] == 2, second
    assert kit.chain.balance_of(kit.usdc(), sweep_kit.offramp) == 20 * USDC
    assert kit.chain.balance_of(kit.usdt(), sweep_kit.offramp) == 30 * USDC
    methods = {
        wallet_id: method
        for wallet_id, method in db.execute("SELECT wallet_id, method FROM sweeps").fetchall()
    }
    assert methods == {usdc.wallet.id: "eip3009", usdt.wallet.id: "gas_topup"}
    assert _ledger_snapshot(db) == ledger_before


def test_chain_sweep_function_without_configuration_reports_and_sends_nothing(
    handler_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HD_SEED_SECRET_ARN", "TREASURY_KEY_SECRET_ARN", "OFFRAMP_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert _invoke("chain_sweep", load_event("chain_sweep_base")) == {"chain_sweep_unavailable": 1}
    with pytest.raises(ValidationError):
        _invoke("chain_sweep", {"chain": "base", "extra": 1})


def _invoke(folder: str, event: dict[str, Any]) -> Any:
    function = next(function for function in TEMPLATE.functions if function.folder == folder)
    return load_handler(function)(event, LocalLambdaContext.for_function(function))


def test_no_key_or_seed_in_the_database_or_logs_after_the_whole_flow(
    sweep_kit: SweepKit, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level, including web3 and botocore
    kit = sweep_kit.kit
    paid = _paid_and_finalized(kit, "USDC")
    _paid_and_finalized(kit, "USDT")
    sweep_kit.sweeper_on(db).sweep_chain("devchain")
    purchase = paid.finalized
    secrets = [
        purchase.customer_key,
        purchase.vendor_key,
        sweep_kit.treasury_key.hex(),
        *(kit.keys.private_key_at(index).hex() for index in range(4)),
        TEST_MNEMONIC,
    ]
    logged = "\n".join(
        [caplog.text] + [f"{record.getMessage()} {record.__dict__}" for record in caplog.records]
    )
    stored = "\n".join(
        str(row)
        for table in (
            "purchases",
            "checkout_wallets",
            "deposits",
            "ledger_entries",
            "finalize_replays",
            "sweeps",
        )
        for row in db.execute(f"SELECT * FROM {table}").fetchall()
    )
    assert caplog.records, "the flow logs something, so the scan means something"
    for secret in secrets:
        assert secret not in logged
        assert secret not in stored
