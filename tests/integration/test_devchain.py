"""The in-process dev chain: the test-only tokens behave like the real ones, EIP-3009 included."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_tester.exceptions import TransactionFailed
from web3 import Web3
from web3.logs import DISCARD

from billing.adapters.chain.eip3009 import TRANSFER_WITH_AUTHORIZATION_TYPES
from billing.domain.chains import Chain
from local.chain import current_devchain
from local.chain.devchain import (
    USDC_NAME,
    USDC_VERSION,
    VYPER_CACHE_DIR,
    Authorization,
    DevChain,
    DevTokens,
    compiled_contract,
    dev_chain_registry_entry,
)
from local.events import HttpRequest
from local.runner import LocalServer
from local.template import DEFAULT_TEMPLATE_PATH

USDC = 10**6
#: secp256k1 group order: (r, n - s) with the other parity is the same signature's malleable twin.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _tokens(chain: DevChain) -> DevTokens:
    assert chain.tokens is not None
    return chain.tokens


def _reverts(reason: str) -> Any:
    return pytest.raises(TransactionFailed, match=reason)


def test_contracts_are_compiled_once_and_cached_on_disk() -> None:
    compiled = compiled_contract("TestUSDC")

    assert compiled is compiled_contract("TestUSDC")
    cached = list(VYPER_CACHE_DIR.glob("TestUSDC-*.json"))
    assert any(json.loads(path.read_text())["bytecode"] == compiled.bytecode for path in cached)


def test_usdc_is_a_6_decimal_erc20_that_only_its_owner_mints(chain: DevChain) -> None:
    usdc = chain.contract(_tokens(chain).usdc)
    alice, bob, carol = chain.accounts[1:4]

    assert (usdc.functions.name().call(), usdc.functions.symbol().call()) == (USDC_NAME, "USDC")
    assert usdc.functions.decimals().call() == 6
    chain.mint(usdc.address, alice, 10 * USDC)
    chain.pay(usdc.address, alice, bob, 3 * USDC)
    usdc.functions.approve(carol, 2 * USDC).transact({"from": bob})
    usdc.functions.transferFrom(bob, carol, 2 * USDC).transact({"from": carol})

    assert [chain.balance_of(usdc.address, who) for who in (alice, bob, carol)] == [7 * USDC, USDC, 2 * USDC]
    assert usdc.functions.totalSupply().call() == 10 * USDC
    with _reverts("only the owner mints"):
        usdc.functions.mint(alice, 1).transact({"from": alice})
    with _reverts("exceeds balance"):
        chain.pay(usdc.address, bob, alice, 2 * USDC)


def test_usdt_transfer_returns_nothing_yet_moves_funds(chain: DevChain) -> None:
    tokens = _tokens(chain)
    alice, bob = chain.accounts[1:3]
    chain.mint(tokens.usdt, alice, 5 * USDC)
    chain.mint(tokens.usdc, alice, 5 * USDC)

    def returned_bytes(token: str) -> bytes:
        call = chain.contract(token).functions.transfer(bob, USDC)
        return bytes(
            chain.web3.eth.call({"from": alice, "to": token, "data": call._encode_transaction_data()})
        )

    assert returned_bytes(tokens.usdt) == b""
    assert returned_bytes(tokens.usdc) == (1).to_bytes(32, "big")
    chain.pay(tokens.usdt, alice, bob, 2 * USDC)
    usdt = chain.contract(tokens.usdt)
    assert (usdt.functions.symbol().call(), usdt.functions.decimals().call()) == ("USDT", 6)
    assert (chain.balance_of(tokens.usdt, alice), chain.balance_of(tokens.usdt, bob)) == (3 * USDC, 2 * USDC)


def test_18_decimal_token_keeps_every_wei(chain: DevChain) -> None:
    dai = _tokens(chain).dai
    alice, bob = chain.accounts[1:3]
    amount = 1_234_567_890_123_456_789  # beyond 2**53: a float would lose the last digits

    chain.mint(dai, alice, amount)
    chain.pay(dai, alice, bob, amount - 1)

    assert chain.contract(dai).functions.decimals().call() == 18
    assert (chain.balance_of(dai, alice), chain.balance_of(dai, bob)) == (1, amount - 1)


def test_fake_usdc_has_the_same_symbol_at_another_address(chain: DevChain) -> None:
    fake = chain.deploy_usdc()

    assert fake != _tokens(chain).usdc
    assert chain.contract(fake).functions.symbol().call() == "USDC"


def test_paying_from_any_private_key_and_funding_gas(chain: DevChain) -> None:
    usdc = _tokens(chain).usdc
    outsider = Account.create()
    chain.fund_eth(outsider.address, 10**17)
    chain.mint(usdc, outsider.address, 4 * USDC)

    chain.pay(usdc, bytes(outsider.key), chain.accounts[5], USDC)

    assert chain.balance_of(usdc, outsider.address) == 3 * USDC
    assert chain.web3.eth.get_balance(outsider.address) < 10**17  # it paid its own gas


def test_mine_snapshot_and_revert_move_the_head(chain: DevChain) -> None:
    start = chain.head()
    snapshot = chain.snapshot()
    tx_hash = chain.mint(_tokens(chain).usdc, chain.accounts[1], USDC)

    assert chain.block_of(tx_hash) == start + 1
    assert chain.mine(3) == start + 4
    chain.revert(snapshot)
    assert chain.head() == start
    assert chain.balance_of(_tokens(chain).usdc, chain.accounts[1]) == 0


# ------------------------------------------------------------------ EIP-3009


def test_signing_domain_matches_the_contract(chain: DevChain) -> None:
    usdc = chain.contract(_tokens(chain).usdc)
    domain = {"name": USDC_NAME, "version": USDC_VERSION, "chainId": chain.chain_id}
    message = encode_typed_data(
        domain_data={**domain, "verifyingContract": usdc.address},
        message_types=TRANSFER_WITH_AUTHORIZATION_TYPES,
        message_data={
            "from": chain.accounts[0],
            "to": chain.accounts[0],
            "value": 0,
            "validAfter": 0,
            "validBefore": 0,
            "nonce": b"\0" * 32,
        },
    )

    assert message.header == usdc.functions.DOMAIN_SEPARATOR().call()


def test_transfer_with_authorization_moves_funds_once(chain: DevChain) -> None:
    usdc = _tokens(chain).usdc
    holder, recipient, relayer = chain.accounts[1], chain.accounts[2], chain.accounts[3]
    chain.mint(usdc, holder, 10 * USDC)
    gas_before = chain.web3.eth.get_balance(holder)

    tx_hash, authorization = chain.transfer_with_authorization(
        usdc, chain.private_key(holder), recipient, 4 * USDC, submitter=relayer
    )

    assert (chain.balance_of(usdc, holder), chain.balance_of(usdc, recipient)) == (6 * USDC, 4 * USDC)
    assert chain.web3.eth.get_balance(holder) == gas_before  # the relayer paid the gas
    contract = chain.contract(usdc)
    assert contract.functions.authorizationState(holder, authorization.nonce).call() is True
    receipt = chain.web3.eth.get_transaction_receipt(tx_hash)
    used = contract.events.AuthorizationUsed().process_receipt(receipt, errors=DISCARD)
    assert [(event.args.authorizer, event.args.nonce) for event in used] == [(holder, authorization.nonce)]
    with _reverts("authorization is used or canceled"):
        chain.submit_authorization(usdc, authorization, submitter=relayer)
    assert chain.balance_of(usdc, recipient) == 4 * USDC


def test_authorization_signed_by_someone_else_is_refused(chain: DevChain) -> None:
    usdc = _tokens(chain).usdc
    holder, thief = chain.accounts[1], chain.accounts[2]
    chain.mint(usdc, holder, 10 * USDC)

    with _reverts("invalid signature"):
        chain.transfer_with_authorization(usdc, chain.private_key(thief), thief, USDC, from_address=holder)
    assert chain.balance_of(usdc, holder) == 10 * USDC


def test_malleable_twin_of_a_valid_signature_is_refused(chain: DevChain) -> None:
    usdc = _tokens(chain).usdc
    holder, recipient = chain.accounts[1], chain.accounts[2]
    chain.mint(usdc, holder, 10 * USDC)
    snapshot = chain.snapshot()
    _, signed = chain.transfer_with_authorization(usdc, chain.private_key(holder), recipient, USDC)
    chain.revert(snapshot)  # the authorization is unused again
    high_s = (SECP256K1_N - int.from_bytes(signed.s, "big")).to_bytes(32, "big")
    twin = Authorization(**{**signed.__dict__, "v": 55 - signed.v, "s": high_s})

    with _reverts("invalid signature s"):
        chain.submit_authorization(usdc, twin)
    chain.submit_authorization(usdc, signed)
    assert chain.balance_of(usdc, recipient) == USDC


def test_expired_and_not_yet_valid_authorizations_are_refused(chain: DevChain) -> None:
    usdc = _tokens(chain).usdc
    holder, recipient = chain.accounts[1], chain.accounts[2]
    chain.mint(usdc, holder, 10 * USDC)
    now = chain.latest_timestamp()
    key = chain.private_key(holder)

    with _reverts("authorization is expired"):
        chain.transfer_with_authorization(usdc, key, recipient, USDC, valid_before=now)
    with _reverts("authorization is not yet valid"):
        chain.transfer_with_authorization(usdc, key, recipient, USDC, valid_after=now + 3600)
    assert chain.balance_of(usdc, recipient) == 0


def test_registry_entry_is_a_valid_dev_chain(chain: DevChain) -> None:
    entry = Chain.model_validate(dev_chain_registry_entry(chain))

    assert (entry.slug, entry.chain_id, entry.confirmations, entry.dev) == (
        "devchain",
        chain.chain_id,
        3,
        True,
    )
    assert entry.tokens["USDC"].address == _tokens(chain).usdc
    assert {symbol: token.decimals for symbol, token in entry.tokens.items()} == {"USDC": 6, "USDT": 6}


# --------------------------------------------------- dev-only routes of the runner


def _dev_request(server: LocalServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = HttpRequest(
        method="POST",
        raw_path=path,
        raw_query_string="",
        headers=[("Content-Type", "application/json")],
        body=json.dumps(body).encode(),
        source_ip="127.0.0.1",
        protocol="HTTP/1.1",
    )
    response = server.dispatch(request)
    return response.status, json.loads(response.body)


def test_faucet_mints_usd_amounts_in_token_units(chain: DevChain) -> None:
    server = LocalServer(DEFAULT_TEMPLATE_PATH, "postgresql://unused", devchain=chain)
    to = chain.accounts[7].lower()

    status, minted = _dev_request(server, "/dev/faucet", {"token": "USDT", "to": to, "amount": "25.5"})

    assert status == 200, minted
    assert minted["block_number"] == chain.head() == chain.block_of(minted["tx_hash"])
    assert chain.balance_of(_tokens(chain).usdt, to) == 25_500_000
    status, mined = _dev_request(server, "/dev/mine", {"blocks": 3})
    assert (status, mined) == (200, {"block_number": minted["block_number"] + 3})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/dev/faucet",
            {"token": "USDC", "to": "0x00000000000000000000000000000000000000aa", "amount": "0.0000001"},
        ),
        ("/dev/faucet", {"token": "USDC", "to": "0x00000000000000000000000000000000000000aa", "amount": "0"}),
        ("/dev/faucet", {"token": "USDC", "to": "0x00000000000000000000000000000000000000aa", "amount": 1}),
        ("/dev/faucet", {"token": "DAI", "to": "0x00000000000000000000000000000000000000aa", "amount": "1"}),
        ("/dev/faucet", {"token": "USDC", "to": "0xf2E246BB76DF876Cef8b38ae84130F4F55De395b", "amount": "1"}),
        ("/dev/mine", {"blocks": 101}),
        ("/dev/mine", {"blocks": 1, "extra": True}),
    ],
)
def test_dev_routes_refuse_bad_requests(chain: DevChain, path: str, body: dict[str, Any]) -> None:
    server = LocalServer(DEFAULT_TEMPLATE_PATH, "postgresql://unused", devchain=chain)
    head = chain.head()

    status, problem = _dev_request(server, path, body)

    assert (status, problem["status"]) == (400, 400)
    assert chain.head() == head


def test_runner_serves_the_dev_chain_while_it_runs(chain: DevChain) -> None:
    with LocalServer(DEFAULT_TEMPLATE_PATH, "postgresql://unused", devchain=chain, aws_mock=False) as server:
        assert current_devchain() is chain
        rpc = Web3(Web3.HTTPProvider(server.devchain_rpc_url))
        assert rpc.eth.chain_id == chain.chain_id
        body = json.dumps({"token": "USDC", "to": chain.accounts[6], "amount": "1"}).encode()
        request = urllib.request.Request(f"{server.base_url}/dev/faucet", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        assert rpc.eth.block_number == chain.head()

    with pytest.raises(RuntimeError):
        current_devchain()
