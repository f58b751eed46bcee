"""Send sweep transactions on one EVM chain with web3 (the sweeper only).

Two ways to move a deposit to the offramp:

- EIP-3009 (USDC): the deposit key signs ``transferWithAuthorization``; the
  treasury account sends that call and pays its gas. The deposit address never
  holds ETH.
- Gas top-up (USDT and other plain ERC-20s): the treasury sends the deposit
  address just enough ETH, then the deposit address sends ``transfer`` itself.
  The call is encoded by hand and its return data is never decoded: USDT's
  ``transfer`` returns nothing, and success is the receipt's status.

Private keys are passed in per call and never stored, logged or put in an
error message. Every failure is a :class:`SweepSendError` naming only the kind
of failure (a node's error text may quote the RPC URL, which can hold an API key).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from eth_abi.abi import decode, encode
from eth_account import Account
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TimeExhausted
from web3.types import TxParams, Wei

from billing.adapters.chain.eip3009 import sign_transfer_with_authorization
from billing.adapters.chain.evm_reader import DEFAULT_TIMEOUT_S, http_endpoint
from billing.adapters.chain.readers import rpc_urls_setting
from billing.domain.chains import Chain
from billing.domain.errors import DependencyUnavailable
from billing.domain.sweeping import SweepSendError, TxOutcome

T = TypeVar("T")

#: keccak256 selectors of the token functions the sweeper calls.
TRANSFER_SELECTOR = bytes.fromhex("a9059cbb")  # transfer(address,uint256)
NAME_SELECTOR = "0x06fdde03"  # name()
VERSION_SELECTOR = "0x54fd4d50"  # version()
TRANSFER_WITH_AUTHORIZATION_SIGNATURE = (
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
#: Sending ETH to an externally owned account always costs exactly this.
ETH_TRANSFER_GAS = 21_000

#: One lock per sending address: nonce lookup, signing and sending happen under it, so
#: threads of one process never reuse a nonce (separate processes rely on the pending nonce).
_SENDER_LOCKS: dict[str, threading.Lock] = {}
_SENDER_LOCKS_GUARD = threading.Lock()


def _sender_lock(address: str) -> threading.Lock:
    with _SENDER_LOCKS_GUARD:
        return _SENDER_LOCKS.setdefault(address, threading.Lock())


def _checksum(address: str) -> ChecksumAddress:
    return Web3.to_checksum_address(address)


def transfer_call_data(to_address: str, value: int) -> bytes:
    """ABI-encoded ``transfer(to, value)``; works for tokens that return nothing (USDT)."""
    return TRANSFER_SELECTOR + encode(["address", "uint256"], [_checksum(to_address), value])


class EvmSweepSender:
    """Sends and waits for sweep transactions on one chain (legacy ``gasPrice`` transactions)."""

    def __init__(
        self,
        web3: Web3,
        chain_id: int,
        *,
        label: str = "",
        poll_interval_s: float = 1.0,
    ) -> None:
        self._web3 = web3
        self._chain_id = chain_id
        self._label = label or type(web3.provider).__name__
        self._poll_interval_s = poll_interval_s
        self._verified = False

    @classmethod
    def from_url(cls, chain_id: int, rpc_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> EvmSweepSender:
        endpoint = http_endpoint(rpc_url, timeout_s=timeout_s)
        return cls(endpoint.web3, chain_id, label=endpoint.label)

    def __repr__(self) -> str:
        return f"EvmSweepSender(chain_id={self._chain_id}, endpoint={self._label!r})"

    # ---------------------------------------------------------------- reads

    def address_of(self, private_key: bytes) -> str:
        return str(Account.from_key(private_key).address)

    def eth_balance(self, address: str) -> int:
        return self._rpc("eth_getBalance", lambda web3: int(web3.eth.get_balance(_checksum(address))))

    def gas_price(self) -> int:
        return self._rpc("eth_gasPrice", lambda web3: int(web3.eth.gas_price))

    def latest_timestamp(self) -> int:
        return self._rpc("eth_getBlockByNumber", lambda web3: int(web3.eth.get_block("latest")["timestamp"]))

    def token_domain(self, token_address: str) -> tuple[str, str]:
        """The token's EIP-712 domain ``(name(), version())`` — a wrong one only makes the call revert."""

        def read(web3: Web3) -> tuple[str, str]:
            token = _checksum(token_address)
            name = decode(["string"], bytes(web3.eth.call({"to": token, "data": HexStr(NAME_SELECTOR)})))[0]
            version = decode(
                ["string"], bytes(web3.eth.call({"to": token, "data": HexStr(VERSION_SELECTOR)}))
            )[0]
            return str(name), str(version)

        return self._rpc("token domain", read)

    def estimate_transfer_gas(
        self, token_address: str, from_address: str, to_address: str, value: int
    ) -> int:
        """Gas for ``from_address`` to send ``transfer(to, value)`` (reverts now if it would revert)."""
        data = transfer_call_data(to_address, value)
        return self._rpc(
            "eth_estimateGas",
            lambda web3: int(
                web3.eth.estimate_gas(
                    # gasPrice 0: the holder has no ETH yet, and nodes then skip the balance check.
                    {
                        "from": _checksum(from_address),
                        "to": _checksum(token_address),
                        "data": data,
                        "gasPrice": Wei(0),
                    }
                )
            ),
        )

    # ---------------------------------------------------------------- sends

    def send_authorized_transfer(
        self,
        *,
        token_address: str,
        holder_key: bytes,
        submitter_key: bytes,
        to_address: str,
        value: int,
        nonce: bytes,
        valid_before: int,
        gas_safety_percent: int,
        gas_price_wei: int,
    ) -> str:
        """Sign EIP-3009 ``transferWithAuthorization`` with ``holder_key``; ``submitter_key`` sends and pays.

        Returns the transaction hash. Replaying the same ``nonce`` can never move the funds twice.
        """
        token = _checksum(token_address)
        holder = _checksum(self.address_of(holder_key))
        name, version = self.token_domain(token)
        v, r, s = sign_transfer_with_authorization(
            holder_key,
            token_name=name,
            token_version=version,
            chain_id=self._chain_id,
            token_address=token,
            from_address=holder,
            to_address=_checksum(to_address),
            value=value,
            valid_after=0,
            valid_before=valid_before,
            nonce=nonce,
        )
        selector = Web3.keccak(text=TRANSFER_WITH_AUTHORIZATION_SIGNATURE)[:4]
        arguments = encode(
            ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32", "bytes32"],
            [holder, _checksum(to_address), value, 0, valid_before, nonce, v, r, s],
        )
        data = bytes(selector) + arguments
        submitter = _checksum(self.address_of(submitter_key))
        estimate = self._rpc(
            "eth_estimateGas",
            lambda web3: int(web3.eth.estimate_gas({"from": submitter, "to": token, "data": data})),
        )
        gas_limit = -(-estimate * gas_safety_percent // 100)
        return self._send_signed(
            submitter_key, {"to": token, "data": data, "value": Wei(0)}, gas_limit, gas_price_wei
        )

    def send_eth(self, *, sender_key: bytes, to_address: str, value_wei: int, gas_price_wei: int) -> str:
        return self._send_signed(
            sender_key,
            {"to": _checksum(to_address), "value": Wei(value_wei)},
            ETH_TRANSFER_GAS,
            gas_price_wei,
        )

    def send_token_transfer(
        self,
        *,
        token_address: str,
        holder_key: bytes,
        to_address: str,
        value: int,
        gas_limit: int,
        gas_price_wei: int,
    ) -> str:
        """``transfer(to, value)`` from the holder, encoded by hand (no return value expected)."""
        transaction: TxParams = {
            "to": _checksum(token_address),
            "data": transfer_call_data(to_address, value),
            "value": Wei(0),
        }
        return self._send_signed(holder_key, transaction, gas_limit, gas_price_wei)

    def wait(self, tx_hash: str, timeout_s: float) -> TxOutcome | None:
        """The mined outcome, or ``None`` if not mined within ``timeout_s`` (ask again later)."""

        def receipt(web3: Web3) -> TxOutcome | None:
            try:
                mined = web3.eth.wait_for_transaction_receipt(
                    HexBytes(tx_hash), timeout=timeout_s, poll_latency=self._poll_interval_s
                )
            except TimeExhausted:
                return None
            gas_used = int(mined["gasUsed"])
            return TxOutcome(
                tx_hash=tx_hash,
                succeeded=int(mined["status"]) == 1,
                gas_used=gas_used,
                fee_wei=gas_used * int(mined["effectiveGasPrice"]),
            )

        return self._rpc("eth_getTransactionReceipt", receipt)

    # ------------------------------------------------------------- plumbing

    def _send_signed(self, key: bytes, transaction: TxParams, gas_limit: int, gas_price_wei: int) -> str:
        sender = _checksum(self.address_of(key))

        def send(web3: Web3) -> str:
            with _sender_lock(sender):
                signed_fields: dict[str, Any] = {
                    **transaction,
                    "from": sender,
                    "gas": gas_limit,
                    "gasPrice": gas_price_wei,
                    "chainId": self._chain_id,
                    "nonce": web3.eth.get_transaction_count(sender, "pending"),
                }
                signed = Account.sign_transaction(signed_fields, key)
                return Web3.to_hex(web3.eth.send_raw_transaction(signed.raw_transaction))

        return self._rpc("eth_sendRawTransaction", send)

    def _rpc(self, operation: str, call: Callable[[Web3], T]) -> T:
        try:
            if not self._verified:
                served = int(self._web3.eth.chain_id)
                if served != self._chain_id:
                    raise SweepSendError(
                        f"the RPC endpoint {self._label} serves chain id {served}, not {self._chain_id}"
                    )
                self._verified = True
            return call(self._web3)
        except SweepSendError:
            raise
        # Every failure of a chain call (transport, RPC error, revert, eth-tester's TransactionFailed
        # which is a bare Exception) ends this attempt; only its type is kept: the text may quote the URL.
        except Exception as error:
            raise SweepSendError(f"{operation} failed on {self._label}: {type(error).__name__}") from None


def private_key_from_hex(value: object) -> bytes:
    """A private key from a secret's ``"0x…"`` hex string, checked, never echoed in an error."""
    text = value if isinstance(value, str) else ""
    try:
        key = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise ValueError("the private key is not hex") from None
    if len(key) != 32:
        raise ValueError("a private key is 32 bytes")
    return key


class EnvChainSenders:
    """A sender per chain from its ``RPC_URLS_<SLUG>`` setting, built once per endpoint and reused by a
    warm container. Only the first URL sends: a send is never retried on another endpoint, where a
    timed-out but delivered gas top-up could be sent twice.
    """

    def __init__(
        self, environ: Mapping[str, str] = os.environ, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self._environ = environ
        self._timeout_s = timeout_s
        self._senders: dict[tuple[int, str], EvmSweepSender] = {}

    def sender_for(self, chain: Chain) -> EvmSweepSender:
        urls = [url.strip() for url in self._environ.get(rpc_urls_setting(chain), "").split(",")]
        urls = [url for url in urls if url]
        if not urls:
            raise DependencyUnavailable(f"no RPC endpoint is configured for {chain.name}")
        key = (chain.chain_id, urls[0])
        if key not in self._senders:
            self._senders[key] = EvmSweepSender.from_url(chain.chain_id, urls[0], timeout_s=self._timeout_s)
        return self._senders[key]
