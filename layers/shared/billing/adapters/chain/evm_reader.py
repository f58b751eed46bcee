"""Read stablecoin deposits from one EVM chain over JSON-RPC (web3.py), with fallback endpoints.

Only chain functions import this module: web3 takes about a second to import.
Every answer is checked before it is used: the endpoint must serve the
expected chain id, and each log must come from the pinned token contract and
go to one of the addresses asked about. Any failure, on every endpoint, is a
:class:`DependencyUnavailable`; nothing is ever half-read.

RPC URLs often carry an API key in the path or query: only the scheme and
host (``label``) ever reach a log line or an error message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from aws_lambda_powertools import Logger
from eth_typing import ChecksumAddress, HexStr
from web3 import HTTPProvider, Web3
from web3.exceptions import Web3Exception
from web3.types import FilterParams

from billing.domain.deposits import ObservedTransfer
from billing.domain.errors import DependencyUnavailable

T = TypeVar("T")
logger = Logger(child=True)

#: keccak256("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
#: keccak256("balanceOf(address)")[:4]
BALANCE_OF_SELECTOR = "0x70a08231"
#: Transport failures, RPC errors, and malformed answers (web3's response formatters raise
#: ValueError/TypeError/KeyError on an HTML page or a bad hex string): all mean "try the next endpoint".
_ENDPOINT_FAILURES = (Web3Exception, requests.RequestException, OSError, ValueError, TypeError, LookupError)

#: Public RPC providers cap eth_getLogs by topic-list length and block span; stay well under.
MAX_RECIPIENTS_PER_QUERY = 100
MAX_BLOCKS_PER_QUERY = 2_000
DEFAULT_TIMEOUT_S = 5.0


class _BadAnswer(ValueError):
    """The endpoint answered something no honest node would: try another one."""


@dataclass(frozen=True)
class RpcEndpoint:
    web3: Web3
    label: str  # safe to log: never a path, query or credentials


def redact_rpc_url(url: str) -> str:
    """``scheme://host[:port]`` of an RPC URL; user info, path and query (API keys) dropped."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def http_endpoint(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> RpcEndpoint:
    """An HTTP JSON-RPC endpoint with a per-request timeout and no retries of its own
    (the reader moves on to the next endpoint instead).
    """
    provider = HTTPProvider(url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None)
    return RpcEndpoint(Web3(provider), redact_rpc_url(url))


def _keep_rpc_urls_out_of_debug_logs() -> None:
    """web3 (provider, session cache) and urllib3 write the full URL, API key included, at DEBUG."""
    for name in ("web3", "urllib3"):
        library_logger = logging.getLogger(name)
        if library_logger.getEffectiveLevel() < logging.INFO:
            library_logger.setLevel(logging.INFO)


def _address_topic(address: str) -> str:
    return "0x" + Web3.to_checksum_address(address)[2:].lower().rjust(64, "0")


def _topic_address(topic: bytes) -> str:
    return Web3.to_checksum_address(topic[-20:])


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def block_spans(from_block: int, to_block: int, size: int) -> Iterator[tuple[int, int]]:
    """Inclusive ``(first, last)`` spans of at most ``size`` blocks covering ``from_block..to_block``."""
    for first in range(from_block, to_block + 1, size):
        yield first, min(first + size - 1, to_block)


class EvmChainReader:
    """:class:`billing.services.ports.ChainReader` over one or more JSON-RPC endpoints, tried in order."""

    def __init__(
        self,
        chain_id: int,
        endpoints: Sequence[RpcEndpoint],
        *,
        chain_name: str | None = None,
        max_recipients_per_query: int = MAX_RECIPIENTS_PER_QUERY,
        max_blocks_per_query: int = MAX_BLOCKS_PER_QUERY,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one RPC endpoint is needed")
        self._chain_id = chain_id
        self._endpoints = list(endpoints)
        self._verified = [False] * len(self._endpoints)
        self._name = chain_name or f"chain {chain_id}"
        self._max_recipients = max_recipients_per_query
        self._max_blocks = max_blocks_per_query

    @classmethod
    def from_urls(
        cls,
        chain_id: int,
        rpc_urls: Sequence[str],
        *,
        chain_name: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> EvmChainReader:
        _keep_rpc_urls_out_of_debug_logs()
        endpoints = [http_endpoint(url, timeout_s=timeout_s) for url in rpc_urls]
        return cls(chain_id, endpoints, chain_name=chain_name)

    @classmethod
    def from_web3(cls, chain_id: int, *web3s: Web3, chain_name: str | None = None) -> EvmChainReader:
        """Already built clients (the in-process dev chain), tried in the order given."""
        endpoints = [RpcEndpoint(web3, type(web3.provider).__name__) for web3 in web3s]
        return cls(chain_id, endpoints, chain_name=chain_name)

    @property
    def chain_id(self) -> int:
        return self._chain_id

    def head(self) -> int:
        return self._on_any_endpoint("eth_blockNumber", lambda web3: int(web3.eth.block_number))

    def transfers_to(
        self, token_address: str, recipients: Sequence[str], from_block: int, to_block: int
    ) -> list[ObservedTransfer]:
        """``Transfer`` logs of the token contract to any of ``recipients``, oldest first."""
        if from_block < 0:
            raise ValueError("from_block must not be negative")
        token = Web3.to_checksum_address(token_address)
        wanted = sorted({Web3.to_checksum_address(recipient) for recipient in recipients})
        found: list[ObservedTransfer] = []
        for group in _chunks(wanted, self._max_recipients):
            for first, last in block_spans(from_block, to_block, self._max_blocks):
                found += self._on_any_endpoint("eth_getLogs", self._transfers_in(token, group, first, last))
        return sorted(found, key=lambda transfer: (transfer.block_number, transfer.log_index))

    def token_balance(self, token_address: str, holder: str) -> int:
        """``balanceOf(holder)`` at the latest block, in token base units."""
        data = HexStr(BALANCE_OF_SELECTOR + _address_topic(holder)[2:])
        token = Web3.to_checksum_address(token_address)

        def balance(web3: Web3) -> int:
            answer = bytes(web3.eth.call({"to": token, "data": data}))
            if len(answer) != 32:
                raise _BadAnswer(f"balanceOf returned {len(answer)} bytes")
            return int.from_bytes(answer, "big")

        return self._on_any_endpoint("balanceOf", balance)

    def _transfers_in(
        self, token: ChecksumAddress, recipients: Sequence[str], first: int, last: int
    ) -> Callable[[Web3], list[ObservedTransfer]]:
        """One eth_getLogs query, decoded; a log the filter excludes discredits the endpoint that sent it."""
        query: FilterParams = {
            "address": token,
            "fromBlock": first,
            "toBlock": last,
            "topics": [TRANSFER_TOPIC, None, [_address_topic(recipient) for recipient in recipients]],
        }

        def read(web3: Web3) -> list[ObservedTransfer]:
            transfers = []
            for log in web3.eth.get_logs(query):
                topics = log["topics"]
                if len(topics) != 3 or len(log["data"]) != 32:
                    continue  # an ERC-721-shaped Transfer: not a token amount (pinned ERC-20s never emit one)
                recipient = _topic_address(topics[2])
                if (
                    Web3.to_checksum_address(log["address"]) != token
                    or recipient not in recipients
                    or not first <= log["blockNumber"] <= last
                    or log.get("removed", False)
                ):
                    raise _BadAnswer("eth_getLogs returned a log outside the filter")
                transfers.append(
                    ObservedTransfer(
                        chain_id=self._chain_id,
                        token_address=token,
                        tx_hash=Web3.to_hex(log["transactionHash"]).lower(),
                        log_index=int(log["logIndex"]),
                        block_number=int(log["blockNumber"]),
                        block_hash=Web3.to_hex(log["blockHash"]).lower(),
                        sender=_topic_address(topics[1]),
                        recipient=recipient,
                        amount_units=int.from_bytes(log["data"], "big"),
                    )
                )
            return transfers

        return read

    def _on_any_endpoint(self, operation: str, call: Callable[[Web3], T]) -> T:
        """``call`` on the first endpoint that answers; a wrong chain is never skipped over."""
        for index, endpoint in enumerate(self._endpoints):
            try:
                self._check_chain(index)
                return call(endpoint.web3)
            except _ENDPOINT_FAILURES as error:
                logger.warning(
                    "chain RPC endpoint failed",
                    extra={
                        "chain": self._name,
                        "endpoint": endpoint.label,
                        "operation": operation,
                        "error": type(error).__name__,  # never str(error): it may quote the URL
                        "remaining_endpoints": len(self._endpoints) - index - 1,
                    },
                )
        raise DependencyUnavailable(
            f"the {self._name} RPC did not answer; nothing was read, try again shortly"
        )

    def _check_chain(self, index: int) -> None:
        """Once per endpoint: it must serve the expected chain, or nothing is read from it."""
        if self._verified[index]:
            return
        served = int(self._endpoints[index].web3.eth.chain_id)
        if served != self._chain_id:
            logger.error(
                "chain RPC endpoint serves another chain",
                extra={"chain": self._name, "endpoint": self._endpoints[index].label, "chain_id": served},
            )
            raise DependencyUnavailable(
                f"the {self._name} RPC is misconfigured: it serves chain id {served}, "
                f"not {self._chain_id}; nothing was read"
            )
        self._verified[index] = True
