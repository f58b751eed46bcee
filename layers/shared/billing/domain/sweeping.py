"""Sweeping rules: which deposits move to the offramp, by which method, and how much gas to lend.

Pure functions over integers (token base units, wei): no float anywhere. The
sweeper service reads balances and sends transactions; these decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID


class SweepMethod(StrEnum):
    #: The deposit key signs an EIP-3009 authorization; the treasury submits it and pays the gas.
    EIP3009 = "eip3009"
    #: The treasury sends the deposit address just enough ETH, which then sends ``transfer`` itself.
    GAS_TOPUP = "gas_topup"


class SweepStatus(StrEnum):
    PENDING = "pending"  # claimed (the row holds the wallet+token slot), nothing on chain yet
    SUBMITTED = "submitted"  # the sweep transaction was sent
    CONFIRMED = "confirmed"  # mined and succeeded
    FAILED = "failed"  # reverted, or never sent; the slot is free again

    @property
    def is_open(self) -> bool:
        return self in (SweepStatus.PENDING, SweepStatus.SUBMITTED)


#: Registry token symbols whose pinned contracts implement EIP-3009 ``transferWithAuthorization``
#: (Circle's native USDC on every registry chain). Anything else pays its own gas.
EIP3009_TOKENS = frozenset({"USDC"})

PERCENT = 100


def sweep_method(token_symbol: str) -> SweepMethod:
    """Gasless for EIP-3009 tokens, a gas top-up for the rest (USDT, …)."""
    return SweepMethod.EIP3009 if token_symbol in EIP3009_TOKENS else SweepMethod.GAS_TOPUP


@dataclass(frozen=True)
class SweepPolicy:
    #: Balances below this (in nano-USD; stablecoins at par) stay where they are: gas would eat them.
    dust_threshold_nano: int = 1_000_000_000  # 1 USD
    #: Gas limit = estimate × this / 100; the top-up covers the whole limit.
    gas_safety_percent: int = 150
    #: Gas price paid = the node's suggestion × this / 100, so a rising base fee still gets mined.
    gas_price_bump_percent: int = 125
    #: How long a signed authorization stays valid (seconds after the latest block's timestamp).
    authorization_ttl_s: int = 3_600
    #: How long to wait for each receipt before leaving the sweep ``submitted`` for the next run.
    receipt_timeout_s: float = 120.0
    #: A pending sweep this old was left by a run that died before sending (> the Lambda timeout).
    abandon_pending_after_s: int = 900
    #: A submitted sweep with no receipt this long after sending was most likely dropped.
    abandon_submitted_after_s: int = 3_600
    #: Wallets looked at per run (a Lambda has a time budget).
    batch_limit: int = 50

    def __post_init__(self) -> None:
        if self.dust_threshold_nano < 0:
            raise ValueError("dust_threshold_nano must not be negative")
        if self.gas_safety_percent < PERCENT or self.gas_price_bump_percent < PERCENT:
            raise ValueError("safety factors are percentages of at least 100")


def min_sweep_units(dust_threshold_nano: int, token_decimals: int) -> int:
    """The dust threshold in token base units, rounded up (never sweep less than the threshold)."""
    if token_decimals >= 9:
        return dust_threshold_nano * int(10 ** (token_decimals - 9))
    scale = int(10 ** (9 - token_decimals))
    return -(-dust_threshold_nano // scale)


def worth_sweeping(balance_units: int, token_decimals: int, policy: SweepPolicy) -> bool:
    return balance_units > 0 and balance_units >= min_sweep_units(policy.dust_threshold_nano, token_decimals)


def _ceil_percent(value: int, percent: int) -> int:
    return -(-value * percent // PERCENT)


@dataclass(frozen=True)
class GasPlan:
    """What the deposit address's own ``transfer`` may burn, and the ETH the treasury lends it."""

    gas_limit: int
    gas_price_wei: int
    topup_wei: int

    @property
    def max_fee_wei(self) -> int:
        return self.gas_limit * self.gas_price_wei


def plan_gas_topup(
    estimated_gas: int, suggested_gas_price_wei: int, held_wei: int, policy: SweepPolicy
) -> GasPlan:
    """Gas limit = estimate × safety; price = suggestion × bump; top-up = limit × price − ETH already held."""
    if estimated_gas <= 0 or suggested_gas_price_wei < 0 or held_wei < 0:
        raise ValueError("gas estimate must be positive; price and balance not negative")
    gas_limit = _ceil_percent(estimated_gas, policy.gas_safety_percent)
    gas_price = _ceil_percent(suggested_gas_price_wei, policy.gas_price_bump_percent)
    return GasPlan(gas_limit, gas_price, max(gas_limit * gas_price - held_wei, 0))


def gas_price_with_bump(suggested_gas_price_wei: int, policy: SweepPolicy) -> int:
    return _ceil_percent(suggested_gas_price_wei, policy.gas_price_bump_percent)


@dataclass(frozen=True)
class SweepTarget:
    """A deposit wallet with a purchase, and the pinned token it received."""

    wallet_id: UUID
    chain_id: int
    hd_index: int
    address: str
    token: str
    token_address: str
    token_decimals: int


@dataclass(frozen=True)
class Sweep:
    """One recorded attempt to move a wallet's token balance to the offramp."""

    id: UUID
    wallet_id: UUID
    chain_id: int
    token_address: str
    from_address: str
    to_address: str
    method: SweepMethod
    amount_units: int
    authorization_nonce: bytes | None
    status: SweepStatus
    topup_tx_hash: str | None = None
    tx_hash: str | None = None
    gas_spent_wei: int = 0
    error: str | None = None


class SweepSendError(Exception):
    """A sweep transaction could not be estimated, signed, sent or confirmed.

    The message is safe to store and log: it names the failure, never an RPC
    URL, a key or the node's raw answer.
    """


@dataclass(frozen=True)
class TxOutcome:
    """A mined transaction: did it succeed, and what it cost its sender (gas used × effective price)."""

    tx_hash: str
    succeeded: bool
    gas_used: int
    fee_wei: int
