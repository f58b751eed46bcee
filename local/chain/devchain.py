"""The in-process dev chain: eth-tester plus the test-only Vyper tokens (never a real network).

Tests and the local runner use it instead of an RPC provider. Every block is
mined as soon as a transaction arrives (eth-tester's auto-mine), accounts are
funded and unlocked, and a snapshot/revert pair simulates a reorg.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

from eth_account import Account
from eth_tester import EthereumTester  # type: ignore[import-untyped]
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.providers.eth_tester import EthereumTesterProvider
from web3.types import RPCEndpoint, RPCResponse, TxParams, Wei

from billing.adapters.chain.eip3009 import sign_transfer_with_authorization

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
VYPER_CACHE_DIR = Path(__file__).resolve().parents[2] / ".local" / "vyper-cache"

#: Registry slug of the dev chain, and its confirmation depth (small, so tests mine little).
DEV_CHAIN_SLUG = "devchain"
DEV_CHAIN_CONFIRMATIONS = 3

#: Name and version in TestUSDC's EIP-712 domain, as on Circle's mainnet USDC.
USDC_NAME = "USD Coin"
USDC_VERSION = "2"


@dataclass(frozen=True)
class CompiledContract:
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def compiled_contract(name: str) -> CompiledContract:
    """``contracts/<name>.vy`` compiled, cached in-process and under ``.local/vyper-cache/``.

    The disk cache is keyed by the sha256 of the compiler version and the
    source, so an edited contract or another Vyper is compiled afresh.
    """
    source = (CONTRACTS_DIR / f"{name}.vy").read_text()
    key = hashlib.sha256(f"vyper {version('vyper')}\n{source}".encode()).hexdigest()
    cached = VYPER_CACHE_DIR / f"{name}-{key}.json"
    if cached.exists():
        document = json.loads(cached.read_text())
    else:
        from vyper.compiler import compile_code  # type: ignore[import-untyped]  # noqa: PLC0415 - slow

        output = compile_code(source, output_formats=["abi", "bytecode"])
        document = {"abi": output["abi"], "bytecode": output["bytecode"]}
        VYPER_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(document))
        partial.replace(cached)  # atomic: parallel test runs never read half a file
    return CompiledContract(abi=document["abi"], bytecode=document["bytecode"])


@dataclass(frozen=True)
class DevTokens:
    """Addresses (EIP-55) of the tokens :meth:`DevChain.deploy_tokens` deployed."""

    usdc: str
    usdt: str
    dai: str  # 18 decimals


@dataclass(frozen=True)
class Authorization:
    """An EIP-3009 ``TransferWithAuthorization`` as submitted, for assertions and replays."""

    from_address: str
    to_address: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    v: int
    r: bytes
    s: bytes


class _LockedTesterProvider(EthereumTesterProvider):
    """eth-tester is not thread-safe; the runner's worker threads and RPC server share one."""

    def __init__(self, tester: EthereumTester, lock: threading.RLock) -> None:
        super().__init__(tester)
        self._lock = lock

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        with self._lock:
            return super().make_request(method, params)


class DevChain:
    """One in-process chain; ``accounts[0]`` deploys and owns the tokens (and mints)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.tester = EthereumTester()
        self.web3 = Web3(_LockedTesterProvider(self.tester, self._lock))
        self.chain_id: int = self.web3.eth.chain_id
        self.accounts: list[str] = list(self.web3.eth.accounts)
        self.tokens: DevTokens | None = None
        self._contracts: dict[str, Contract] = {}

    # --------------------------------------------------------------- accounts

    def private_key(self, account: str) -> bytes:
        """The private key of a funded test account (all are well known: never use them elsewhere)."""
        for key in self.tester.backend.account_keys:
            if key.public_key.to_checksum_address() == Web3.to_checksum_address(account):
                return bytes(key.to_bytes())
        raise KeyError(f"{account} is not a test account of this chain")

    def fund_eth(self, address: str, wei: int) -> str:
        """Send ``wei`` from ``accounts[0]``; returns the transaction hash."""
        tx_hash = self.web3.eth.send_transaction(
            {"from": self.accounts[0], "to": Web3.to_checksum_address(address), "value": Wei(wei)}
        )
        return Web3.to_hex(tx_hash)

    # ---------------------------------------------------------------- tokens

    def deploy(self, contract_name: str, *constructor_args: Any) -> str:
        """Deploy ``contracts/<contract_name>.vy`` from ``accounts[0]``; returns its address."""
        compiled = compiled_contract(contract_name)
        factory = self.web3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
        tx_hash = factory.constructor(*constructor_args).transact({"from": self.accounts[0]})
        address = self.web3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"]
        assert address is not None
        self._contracts[address] = self.web3.eth.contract(address=address, abi=compiled.abi)
        return str(address)

    def deploy_usdc(self) -> str:
        """A TestUSDC; a second call makes a *fake* USDC (same name and symbol, another address)."""
        return self.deploy("TestUSDC", USDC_NAME, "USDC", USDC_VERSION)

    def deploy_tokens(self) -> DevTokens:
        self.tokens = DevTokens(
            usdc=self.deploy_usdc(), usdt=self.deploy("TestUSDT"), dai=self.deploy("Test18")
        )
        return self.tokens

    def contract(self, token: str) -> Contract:
        return self._contracts[Web3.to_checksum_address(token)]

    def mint(self, token: str, to: str, amount_units: int) -> str:
        """Mint from the owner (a ``Transfer`` from the zero address); returns the transaction hash."""
        call = self.contract(token).functions.mint(Web3.to_checksum_address(to), amount_units)
        return self._send(call.build_transaction({"from": self.accounts[0]}), None)

    def pay(self, token: str, sender: str | bytes, to: str, amount_units: int) -> str:
        """An ERC-20 ``transfer`` from a test account (by address) or from any private key."""
        key = sender if isinstance(sender, bytes) else None
        account = Account.from_key(sender).address if isinstance(sender, bytes) else sender
        call = self.contract(token).functions.transfer(Web3.to_checksum_address(to), amount_units)
        return self._send(call.build_transaction({"from": Web3.to_checksum_address(account)}), key)

    def balance_of(self, token: str, holder: str) -> int:
        return int(self.contract(token).functions.balanceOf(Web3.to_checksum_address(holder)).call())

    def transfer_with_authorization(
        self,
        token: str,
        signer_key: bytes,
        to: str,
        value: int,
        *,
        from_address: str | None = None,
        valid_after: int = 0,
        valid_before: int | None = None,
        nonce: bytes | None = None,
        submitter: str | None = None,
    ) -> tuple[str, Authorization]:
        """Sign an EIP-3009 authorization with ``signer_key`` and submit it (gas paid by ``submitter``).

        ``from_address`` defaults to the signer's address; setting another one
        makes a wrongly signed authorization. Valid for an hour unless told.
        """
        contract = self.contract(token)
        if valid_before is None:
            valid_before = self.latest_timestamp() + 3600
        authorization_from = Web3.to_checksum_address(from_address or Account.from_key(signer_key).address)
        nonce = nonce if nonce is not None else secrets.token_bytes(32)
        v, r, s = sign_transfer_with_authorization(
            signer_key,
            token_name=contract.functions.name().call(),
            token_version=contract.functions.version().call(),
            chain_id=self.chain_id,
            token_address=contract.address,
            from_address=authorization_from,
            to_address=Web3.to_checksum_address(to),
            value=value,
            valid_after=valid_after,
            valid_before=valid_before,
            nonce=nonce,
        )
        authorization = Authorization(
            authorization_from, Web3.to_checksum_address(to), value, valid_after, valid_before, nonce, v, r, s
        )
        return self.submit_authorization(token, authorization, submitter=submitter), authorization

    def submit_authorization(
        self, token: str, authorization: Authorization, *, submitter: str | None = None
    ) -> str:
        """Send ``transferWithAuthorization``; reverts (invalid, used, expired) raise before mining."""
        call = self.contract(token).functions.transferWithAuthorization(
            authorization.from_address,
            authorization.to_address,
            authorization.value,
            authorization.valid_after,
            authorization.valid_before,
            authorization.nonce,
            authorization.v,
            authorization.r,
            authorization.s,
        )
        return self._send(call.build_transaction({"from": submitter or self.accounts[0]}), None)

    def _send(self, transaction: TxParams, private_key: bytes | None) -> str:
        """Mine ``transaction``: unlocked test accounts send it, any other key signs it here."""
        if private_key is None:
            tx_hash = self.web3.eth.send_transaction(transaction)
        else:
            transaction["nonce"] = self.web3.eth.get_transaction_count(Account.from_key(private_key).address)
            signed = Account.sign_transaction(cast(dict[str, Any], transaction), private_key)
            tx_hash = self.web3.eth.send_raw_transaction(signed.raw_transaction)
        return Web3.to_hex(tx_hash)

    # ----------------------------------------------------------------- blocks

    def head(self) -> int:
        return int(self.web3.eth.block_number)

    def block_of(self, tx_hash: str) -> int:
        """The block a mined transaction is in."""
        return int(self.web3.eth.get_transaction_receipt(HexBytes(tx_hash))["blockNumber"])

    def latest_timestamp(self) -> int:
        return int(self.web3.eth.get_block("latest")["timestamp"])

    def mine(self, blocks: int = 1) -> int:
        """Mine empty blocks; returns the new head."""
        with self._lock:
            self.tester.mine_blocks(blocks)
        return self.head()

    def snapshot(self) -> int:
        with self._lock:
            return int(self.tester.take_snapshot())

    def revert(self, snapshot_id: int) -> None:
        """Back to the snapshot: every later block is gone, as after a reorg."""
        with self._lock:
            self.tester.revert_to_snapshot(snapshot_id)

    # ------------------------------------------------------------ JSON-RPC

    @contextlib.contextmanager
    def serve_json_rpc(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the chain over HTTP JSON-RPC (for clients that want a URL); yields it."""
        rpc = Web3(self.web3.provider, middleware=[])
        request_func = rpc.provider.request_func(rpc, rpc.middleware_onion)
        server = ThreadingHTTPServer((host, port), _json_rpc_handler(request_func))
        thread = threading.Thread(target=server.serve_forever, name="devchain-rpc", daemon=True)
        thread.start()
        try:
            yield f"http://{host}:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()
            server.server_close()


def dev_chain_registry_entry(devchain: DevChain) -> dict[str, Any]:
    """The dev chain as a chain registry entry (``billing.domain.chains.Chain``), to add at runtime."""
    if devchain.tokens is None:
        raise RuntimeError("deploy_tokens() first")
    return {
        "slug": DEV_CHAIN_SLUG,
        "name": "Local dev chain (eth-tester)",
        "chain_id": devchain.chain_id,
        "testnet": True,
        "dev": True,
        "confirmations": DEV_CHAIN_CONFIRMATIONS,
        "tokens": {
            "USDC": {"address": devchain.tokens.usdc, "decimals": 6},
            "USDT": {"address": devchain.tokens.usdt, "decimals": 6},
        },
    }


def _rpc_json(value: Any) -> Any:
    """eth-tester results → JSON-RPC wire format (hex quantities and data)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return HexBytes(value).to_0x_hex()
    if isinstance(value, Mapping):
        return {key: _rpc_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rpc_json(item) for item in value]
    raise TypeError(f"no JSON-RPC form for {type(value).__name__}")


def _json_rpc_handler(
    request_func: Callable[[RPCEndpoint, Any], RPCResponse],
) -> type[BaseHTTPRequestHandler]:
    class JsonRpcHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            try:
                response = request_func(RPCEndpoint(request["method"]), request.get("params", []))
                outcome = (
                    {"error": response["error"]}
                    if "error" in response
                    else {"result": _rpc_json(response["result"])}
                )
            except Exception as error:  # every failure is the client's answer, as a node gives it
                outcome = {"error": {"code": -32000, "message": str(error)}}
            answer = {"jsonrpc": "2.0", "id": request.get("id"), **outcome}
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: the runner logs its own requests."""

    return JsonRpcHandler
