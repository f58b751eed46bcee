"""Stablecoin deposits: what the chain showed, and exact conversion to nano-USD.

A transfer is identified by ``(chain_id, tx_hash, log_index)``. It is credited
only once it has the chain's confirmation depth, and one that disappears from
the chain (a reorg) before that is never credited.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.domain.money import NANO_DECIMALS


@dataclass(frozen=True)
class ObservedTransfer:
    """One ERC-20 ``Transfer`` log to a deposit address, as read from the chain."""

    chain_id: int
    token_address: str  # EIP-55 checksummed
    tx_hash: str  # 0x-prefixed, lower case
    log_index: int
    block_number: int
    block_hash: str  # 0x-prefixed, lower case
    sender: str  # EIP-55 checksummed
    recipient: str  # EIP-55 checksummed
    amount_units: int  # token base units


def _ten_to(exponent: int) -> int:
    return int(10**exponent)


def units_to_nano(amount_units: int, decimals: int) -> int:
    """Token base units → nano-USD at stablecoin par; below-nano dust of 18-decimal tokens is truncated."""
    if amount_units < 0 or decimals < 0:
        raise ValueError("token amounts and decimals are never negative")
    if decimals <= NANO_DECIMALS:
        return amount_units * _ten_to(NANO_DECIMALS - decimals)
    return amount_units // _ten_to(decimals - NANO_DECIMALS)


def nano_to_units(amount_nano: int, decimals: int) -> int:
    """nano-USD → token base units, rounding up so that paying it always covers the amount."""
    if decimals >= NANO_DECIMALS:
        return amount_nano * _ten_to(decimals - NANO_DECIMALS)
    step = _ten_to(NANO_DECIMALS - decimals)
    return -(-amount_nano // step)


def confirmations(head_block: int, block_number: int) -> int:
    """Blocks that include the transfer's block (1 when it is in the head block)."""
    return max(head_block - block_number + 1, 0)
