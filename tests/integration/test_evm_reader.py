"""EvmChainReader against the in-process chain: directly, and over real HTTP JSON-RPC."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider
from web3.types import RPCEndpoint, RPCResponse

from billing.adapters.chain import evm_reader
from billing.adapters.chain.evm_reader import EvmChainReader, RpcEndpoint, block_spans, redact_rpc_url
from billing.domain.deposits import confirmations, units_to_nano
from billing.domain.errors import DependencyUnavailable
from local.chain.devchain import DevChain, DevTokens

USDC = 10**6
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
#: A closed port on loopback: connections are refused at once.
DEAD_RPC = "http://127.0.0.1:9"


class RecordingProvider(EthereumTesterProvider):
    """The same chain, with every request the reader sends written down."""

    def __init__(self, chain: DevChain) -> None:
        super().__init__(chain.tester)
        self.requests: list[tuple[str, Any]] = []

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        self.requests.append((method, params))
        return super().make_request(method, params)

    def log_queries(self) -> list[dict[str, Any]]:
        return [params[0] for method, params in self.requests if method == "eth_getLogs"]


class AddressIgnoringProvider(EthereumTesterProvider):
    """A broken node: it drops the contract filter of eth_getLogs."""

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        if method == "eth_getLogs":
            params = [{key: value for key, value in params[0].items() if key != "address"}]
        return super().make_request(method, params)


@pytest.fixture(scope="module")
def rpc_url(module_chain: DevChain) -> Iterator[str]:
    with module_chain.serve_json_rpc() as url:
        yield url


@pytest.fixture
def reader_log() -> Iterator[list[logging.LogRecord]]:
    """What the reader logs (its Powertools logger may not propagate to pytest's handler)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logging.getLogger(evm_reader.logger.name).addHandler(handler)
    yield records
    logging.getLogger(evm_reader.logger.name).removeHandler(handler)


def _tokens(chain: DevChain) -> DevTokens:
    assert chain.tokens is not None
    return chain.tokens


def _reader(chain: DevChain) -> EvmChainReader:
    return EvmChainReader.from_web3(chain.chain_id, chain.web3, chain_name="devchain")


def _fresh_addresses(count: int, first: int = 1) -> list[str]:
    return [
        Web3.to_checksum_address(f"0x{0xDE9051700000 + index:040x}") for index in range(first, first + count)
    ]


def test_finds_transfers_to_many_recipients_across_chunks(chain: DevChain) -> None:
    usdc = _tokens(chain).usdc
    payer = chain.accounts[1]
    recipients = _fresh_addresses(5)
    start = chain.head() + 1
    minted = chain.mint(usdc, payer, 100 * USDC)
    paid = [chain.pay(usdc, payer, recipient, (n + 1) * USDC) for n, recipient in enumerate(recipients)]
    chain.mine(2)
    recording = RecordingProvider(chain)
    reader = EvmChainReader(
        chain.chain_id,
        [RpcEndpoint(Web3(recording), "recording")],
        max_recipients_per_query=2,
        max_blocks_per_query=3,
    )

    found = reader.transfers_to(usdc, [*recipients, payer.lower()], start, chain.head())

    expected = [(minted, ZERO_ADDRESS, payer, 100 * USDC)] + [
        (tx_hash, payer, recipient, (n + 1) * USDC)
        for n, (tx_hash, recipient) in enumerate(zip(paid, recipients, strict=True))
    ]
    assert [(t.tx_hash, t.sender, t.recipient, t.amount_units) for t in found] == expected
    assert [t.block_number for t in found] == list(range(start, start + 6))
    assert all(t.token_address == usdc and t.chain_id == chain.chain_id for t in found)
    assert all(t.tx_hash == t.tx_hash.lower() and t.block_hash.startswith("0x") for t in found)
    # 6 recipients in groups of 2, 8 blocks in spans of 3: 3 × 3 queries, each within both limits.
    queries = recording.log_queries()
    assert len(queries) == 9
    assert all(len(query["topics"][2]) <= 2 for query in queries)
    assert all(query["to_block"] - query["from_block"] < 3 for query in queries)  # eth-tester spelling


def test_reads_only_the_pinned_contract_and_the_asked_recipients(chain: DevChain) -> None:
    tokens = _tokens(chain)
    recipient, someone_else = _fresh_addresses(2)
    fake_usdc = chain.deploy_usdc()  # same name and symbol, another contract
    start = chain.head() + 1
    chain.mint(fake_usdc, recipient, 1_000 * USDC)
    chain.mint(tokens.usdt, recipient, 2 * USDC)
    chain.mint(tokens.dai, recipient, 3 * 10**18)
    chain.mint(tokens.usdc, someone_else, 4 * USDC)
    real = chain.mint(tokens.usdc, recipient, 5 * USDC)

    found = _reader(chain).transfers_to(tokens.usdc, [recipient], start, chain.head())

    assert [(t.tx_hash, t.token_address, t.amount_units) for t in found] == [(real, tokens.usdc, 5 * USDC)]


def test_amounts_are_exact_for_6_and_18_decimals(chain: DevChain) -> None:
    tokens = _tokens(chain)
    usdc_holder, dai_holder, whale = _fresh_addresses(3)
    start = chain.head() + 1
    chain.mint(tokens.usdc, usdc_holder, 123_456_789)
    chain.mint(tokens.dai, dai_holder, 1_234_567_890_123_456_789)
    chain.mint(tokens.dai, whale, 2**255)  # a full-width uint256 word
    reader = _reader(chain)

    (usdc_transfer,) = reader.transfers_to(tokens.usdc, [usdc_holder], start, chain.head())
    dai_transfers = reader.transfers_to(tokens.dai, [dai_holder, whale], start, chain.head())

    assert usdc_transfer.amount_units == 123_456_789
    assert units_to_nano(usdc_transfer.amount_units, 6) == 123_456_789_000
    assert [t.amount_units for t in dai_transfers] == [1_234_567_890_123_456_789, 2**255]
    assert units_to_nano(dai_transfers[0].amount_units, 18) == 1_234_567_890  # sub-nano dust truncated
    assert reader.token_balance(tokens.dai, dai_holder) == 1_234_567_890_123_456_789
    assert reader.token_balance(tokens.usdc, whale) == 0


def test_head_and_confirmations(chain: DevChain) -> None:
    reader = _reader(chain)
    recipient = _fresh_addresses(1)[0]
    tx_hash = chain.mint(_tokens(chain).usdc, recipient, USDC)

    assert reader.head() == chain.head() == chain.block_of(tx_hash)
    assert confirmations(reader.head(), chain.block_of(tx_hash)) == 1
    chain.mine(2)
    assert confirmations(reader.head(), chain.block_of(tx_hash)) == 3


def test_a_reorged_transfer_is_gone_from_the_next_read(chain: DevChain) -> None:
    usdc = _tokens(chain).usdc
    recipient = _fresh_addresses(1)[0]
    reader = _reader(chain)
    start = chain.head() + 1
    fork_point = chain.snapshot()
    chain.mint(usdc, recipient, 7 * USDC)
    (before,) = reader.transfers_to(usdc, [recipient], start, reader.head())

    chain.revert(fork_point)
    chain.mint(usdc, chain.accounts[2], USDC)  # the competing block at the same height pays someone else
    chain.mine(3)

    assert reader.transfers_to(usdc, [recipient], start, reader.head()) == []
    assert chain.web3.eth.get_block(before.block_number)["hash"] != bytes.fromhex(before.block_hash[2:])


def test_an_endpoint_on_another_chain_is_never_read(chain: DevChain) -> None:
    wrong = RecordingProvider(chain)
    right = RecordingProvider(chain)
    reader = EvmChainReader(1, [RpcEndpoint(Web3(wrong), "wrong"), RpcEndpoint(Web3(right), "right")])

    with pytest.raises(DependencyUnavailable, match=f"serves chain id {chain.chain_id}, not 1"):
        reader.transfers_to(_tokens(chain).usdc, [chain.accounts[1]], 0, chain.head())

    assert [method for method, _ in wrong.requests] == ["eth_chainId"]
    assert right.requests == []  # not even as a fallback


def test_chain_id_is_checked_once_per_endpoint(chain: DevChain) -> None:
    recording = RecordingProvider(chain)
    reader = EvmChainReader(chain.chain_id, [RpcEndpoint(Web3(recording), "recording")])

    reader.head()
    reader.head()

    assert [method for method, _ in recording.requests] == [
        "eth_chainId",
        "eth_blockNumber",
        "eth_blockNumber",
    ]


def test_unreachable_rpc_is_unavailable_without_leaking_its_url(
    reader_log: list[logging.LogRecord], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = "http://user:SECRET@127.0.0.1:9/v2/SECRET-KEY?apikey=SECRET"
    reader = EvmChainReader.from_urls(1, [url], chain_name="Ethereum", timeout_s=2)
    started = time.monotonic()

    with pytest.raises(DependencyUnavailable, match="the Ethereum RPC did not answer") as raised:
        reader.head()

    assert time.monotonic() - started < 2
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # no URL in a traceback
    assert "SECRET" not in raised.value.detail
    assert [record.__dict__.get("endpoint") for record in reader_log] == ["http://127.0.0.1:9"]
    logged = " ".join(str(record.__dict__) for record in [*reader_log, *caplog.records])
    assert "SECRET" not in logged


def test_rpc_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never replies
        reader = EvmChainReader.from_urls(1, [f"http://127.0.0.1:{silent.getsockname()[1]}"], timeout_s=0.5)
        started = time.monotonic()

        with pytest.raises(DependencyUnavailable):
            reader.head()

    assert 0.4 < time.monotonic() - started < 3


@pytest.mark.parametrize(
    "answer",
    [
        b"<html>502 Bad Gateway</html>",
        b'{"jsonrpc":"2.0","id":0,"result":"0xzz"}',
        b'{"jsonrpc":"2.0","id":0}',
    ],
)
def test_garbage_answers_are_unavailability_not_crashes(answer: bytes) -> None:
    class Garbage(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = EvmChainReader.from_urls(1, [f"http://127.0.0.1:{server.server_address[1]}"])
        with pytest.raises(DependencyUnavailable):
            reader.head()
    finally:
        server.shutdown()
        server.server_close()


def test_falls_back_from_a_dead_endpoint_to_a_working_one_over_http(
    chain: DevChain, rpc_url: str, reader_log: list[logging.LogRecord]
) -> None:
    usdc = _tokens(chain).usdc
    recipient = _fresh_addresses(1)[0]
    start = chain.head() + 1
    tx_hash = chain.mint(usdc, recipient, 9 * USDC)
    reader = EvmChainReader.from_urls(chain.chain_id, [DEAD_RPC, rpc_url], chain_name="devchain", timeout_s=2)

    found = reader.transfers_to(usdc, [recipient], start, reader.head())

    assert [(t.tx_hash, t.amount_units) for t in found] == [(tx_hash, 9 * USDC)]
    assert found == _reader(chain).transfers_to(usdc, [recipient], start, chain.head())
    assert reader.token_balance(usdc, recipient) == 9 * USDC
    assert {record.__dict__["endpoint"] for record in reader_log} == {DEAD_RPC}


def test_logs_outside_the_filter_make_the_reader_try_another_endpoint(
    chain: DevChain, reader_log: list[logging.LogRecord]
) -> None:
    usdc = _tokens(chain).usdc
    recipient = _fresh_addresses(1)[0]
    start = chain.head() + 1
    chain.mint(chain.deploy_usdc(), recipient, 1_000 * USDC)
    real = chain.mint(usdc, recipient, USDC)
    broken = RpcEndpoint(Web3(AddressIgnoringProvider(chain.tester)), "broken")

    fallback = EvmChainReader(chain.chain_id, [broken, RpcEndpoint(chain.web3, "honest")])
    only_broken = EvmChainReader(chain.chain_id, [broken])

    assert [t.tx_hash for t in fallback.transfers_to(usdc, [recipient], start, chain.head())] == [real]
    with pytest.raises(DependencyUnavailable):
        only_broken.transfers_to(usdc, [recipient], start, chain.head())
    assert {record.__dict__["error"] for record in reader_log} == {"_BadAnswer"}


def test_an_empty_block_range_reads_nothing(chain: DevChain) -> None:
    recording = RecordingProvider(chain)
    reader = EvmChainReader(chain.chain_id, [RpcEndpoint(Web3(recording), "recording")])

    assert reader.transfers_to(_tokens(chain).usdc, [chain.accounts[1]], 10, 9) == []
    assert recording.log_queries() == []


def test_block_spans_cover_the_range_exactly() -> None:
    assert list(block_spans(0, 4_000, 2_000)) == [(0, 1_999), (2_000, 3_999), (4_000, 4_000)]
    assert list(block_spans(5, 5, 2_000)) == [(5, 5)]


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("https://base-mainnet.g.alchemy.com/v2/KEY", "https://base-mainnet.g.alchemy.com"),
        ("https://user:pass@rpc.example:8545/path?key=1", "https://rpc.example:8545"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9"),
    ],
)
def test_rpc_urls_are_redacted_to_scheme_and_host(url: str, label: str) -> None:
    assert redact_rpc_url(url) == label
