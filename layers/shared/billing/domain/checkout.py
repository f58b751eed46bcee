"""Checkout rules: a wallet's status, and reconciling what the chain shows with what we recorded.

Pure functions over plain values: the service reads the chain and the
database, these decide what changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from billing.domain.deposits import ObservedTransfer, confirmations, units_to_nano


class WalletStatus(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    EXPIRED = "expired"
    FINALIZED = "finalized"


class DepositState(StrEnum):
    SEEN = "seen"  # on chain, not yet at confirmation depth
    CONFIRMED = "confirmed"  # at depth, not yet in the ledger (no purchase yet)
    CREDITED = "credited"  # in the ledger: final
    REORGED = "reorged"  # vanished from the chain before it was credited


@dataclass(frozen=True)
class RecordedDeposit:
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    sender: str
    amount_units: int
    amount_nano: int
    state: DepositState

    @property
    def key(self) -> tuple[str, int]:
        return (self.tx_hash, self.log_index)


@dataclass(frozen=True)
class DepositChange:
    """Insert (``is_new``) or update one deposit row to ``deposit``."""

    deposit: RecordedDeposit
    is_new: bool


def reconcile_deposits(
    recorded: list[RecordedDeposit],
    observed: list[ObservedTransfer],
    *,
    scanned_from_block: int,
    head_block: int,
    confirmations_required: int,
    token_decimals: int,
) -> list[DepositChange]:
    """What the latest scan of ``[scanned_from_block, head_block]`` changes.

    - a transfer seen for the first time is recorded (confirmed if already deep enough);
    - an uncredited deposit moves with the chain: new block, depth reached, or back from a reorg;
    - an uncredited deposit inside the scanned range that the scan no longer shows was reorged away;
    - credited deposits are final and never change here.
    """
    by_key = {deposit.key: deposit for deposit in recorded}
    seen_now: set[tuple[str, int]] = set()
    changes: list[DepositChange] = []
    for transfer in observed:
        key = (transfer.tx_hash, transfer.log_index)
        seen_now.add(key)
        deep_enough = confirmations(head_block, transfer.block_number) >= confirmations_required
        state = DepositState.CONFIRMED if deep_enough else DepositState.SEEN
        before = by_key.get(key)
        if before is not None and before.state is DepositState.CREDITED:
            continue
        after = RecordedDeposit(
            tx_hash=transfer.tx_hash,
            log_index=transfer.log_index,
            block_number=transfer.block_number,
            block_hash=transfer.block_hash,
            sender=transfer.sender,
            amount_units=transfer.amount_units,
            amount_nano=units_to_nano(transfer.amount_units, token_decimals),
            state=state,
        )
        if after != before:
            changes.append(DepositChange(after, is_new=before is None))
    for deposit in recorded:
        vanished = (
            deposit.key not in seen_now
            and deposit.state in (DepositState.SEEN, DepositState.CONFIRMED)
            and scanned_from_block <= deposit.block_number <= head_block
        )
        if vanished:
            changes.append(DepositChange(replace(deposit, state=DepositState.REORGED), is_new=False))
    return changes


def rescan_start(
    recorded: list[RecordedDeposit],
    *,
    created_block: int,
    last_scanned_block: int | None,
    confirmations_required: int,
) -> int:
    """Where the next scan must start so that every uncredited deposit is re-checked and nothing is missed.

    Blocks older than the confirmation depth behind the last scan cannot change any more.
    """
    start = created_block
    if last_scanned_block is not None:
        start = max(created_block, last_scanned_block - confirmations_required + 1)
    pending = [
        deposit.block_number
        for deposit in recorded
        if deposit.state in (DepositState.SEEN, DepositState.CONFIRMED)
    ]
    return min([start, *pending])


@dataclass(frozen=True)
class PaymentProgress:
    confirmed_nano: int  # confirmed or credited
    pending_nano: int  # seen, not yet deep enough
    remaining_nano: int  # still to pay before the wallet counts as paid


def payment_progress(deposits: list[RecordedDeposit], min_target_nano: int) -> PaymentProgress:
    confirmed = sum(
        d.amount_nano for d in deposits if d.state in (DepositState.CONFIRMED, DepositState.CREDITED)
    )
    pending = sum(d.amount_nano for d in deposits if d.state is DepositState.SEEN)
    return PaymentProgress(confirmed, pending, max(min_target_nano - confirmed, 0))


def wallet_status(
    progress: PaymentProgress, *, finalized: bool, expires_at: datetime, now: datetime
) -> WalletStatus:
    """``paid`` wins over ``expired``: a late payment is recorded and still honoured."""
    if finalized:
        return WalletStatus.FINALIZED
    if progress.remaining_nano == 0:
        return WalletStatus.PAID
    if now >= expires_at:
        return WalletStatus.EXPIRED
    if progress.confirmed_nano or progress.pending_nano:
        return WalletStatus.PARTIALLY_PAID
    return WalletStatus.AWAITING_PAYMENT


def deposit_idempotency_key(chain_id: int, tx_hash: str, log_index: int) -> str:
    """The ledger key of a deposit: one credit per on-chain transfer, ever."""
    return f"deposit:{chain_id}:{tx_hash}:{log_index}"


@dataclass(frozen=True)
class Wallet:
    """A checkout's deposit address and what it is waiting for."""

    id: UUID
    offer_id: str
    chain: str
    chain_id: int
    token: str
    token_address: str
    token_decimals: int
    address: str
    hd_index: int
    min_target_balance_nano: int
    confirmations_required: int
    status: WalletStatus
    expires_at: datetime
    created_block: int
    last_scanned_block: int | None
    purchase_id: UUID | None
    customer: dict[str, Any] = field(default_factory=dict)


def expected_on_chain_units(deposits: list[RecordedDeposit], swept_units: int) -> int:
    """What ``balanceOf(deposit address)`` should show: every transfer still on chain, minus sweeps.

    A reconciliation check only: credits never come from ``balanceOf``.
    """
    received = sum(deposit.amount_units for deposit in deposits if deposit.state is not DepositState.REORGED)
    return received - swept_units
