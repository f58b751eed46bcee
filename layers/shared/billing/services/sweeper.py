"""Sweep deposit wallets to the offramp: USDC gaslessly (EIP-3009), other tokens with a gas top-up.

Safe to run twice at once and to re-run: a sweep is first *claimed* (a pending
row; a partial unique index allows one open sweep per wallet and token), the
balance is re-read under the claim, and only then does anything reach the
chain. Every step is recorded (authorization nonce and top-up before sending,
then the transaction hash, then the outcome and the gas spent), so a crashed
run leaves a row that says what happened.

The ledger is never touched: the customer's deposits were credited when they
arrived, and sweeping only moves the vendor's own funds on chain.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from uuid import UUID, uuid4

from aws_lambda_powertools import Logger

from billing.domain.chains import Chain, ChainRegistry
from billing.domain.errors import DependencyUnavailable
from billing.domain.sweeping import (
    Sweep,
    SweepMethod,
    SweepPolicy,
    SweepSendError,
    SweepStatus,
    SweepTarget,
    TxOutcome,
    gas_price_with_bump,
    plan_gas_topup,
    sweep_method,
    worth_sweeping,
)
from billing.services.checkout import ChainReaders

T = TypeVar("T")
logger = Logger(child=True)

#: How long to wait, at the start of a run, for a receipt an earlier run did not see.
RESUME_WAIT_S = 5.0
DEFAULT_POLICY = SweepPolicy()


class SweepStore(Protocol):
    def targets(self, chain_id: int, limit: int) -> list[SweepTarget]: ...
    def claim(self, sweep: Sweep) -> bool: ...
    def release(self, sweep_id: UUID) -> None: ...
    def record_topup(
        self, sweep_id: UUID, topup_tx_hash: str, topup_wei: int, gas_spent_wei: int
    ) -> None: ...
    def mark_submitted(self, sweep_id: UUID, tx_hash: str) -> None: ...
    def mark_confirmed(self, sweep_id: UUID, gas_spent_wei: int) -> None: ...
    def mark_failed(self, sweep_id: UUID, error: str, gas_spent_wei: int) -> None: ...
    def submitted(self, chain_id: int, limit: int) -> list[Sweep]: ...
    def fail_abandoned(self, chain_id: int, pending_after_s: int, submitted_after_s: int) -> int: ...


class SweepUnitOfWork(Protocol):
    @property
    def sweeps(self) -> SweepStore: ...


class SweepTransactions(Protocol):
    def run(self, work: Callable[[SweepUnitOfWork], T]) -> T: ...


class SweepSender(Protocol):
    """Signs and sends sweep transactions on one chain (``EvmSweepSender``)."""

    def eth_balance(self, address: str) -> int: ...
    def gas_price(self) -> int: ...
    def latest_timestamp(self) -> int: ...
    def estimate_transfer_gas(
        self, token_address: str, from_address: str, to_address: str, value: int
    ) -> int: ...
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
    ) -> str: ...
    def send_eth(self, *, sender_key: bytes, to_address: str, value_wei: int, gas_price_wei: int) -> str: ...
    def send_token_transfer(
        self,
        *,
        token_address: str,
        holder_key: bytes,
        to_address: str,
        value: int,
        gas_limit: int,
        gas_price_wei: int,
    ) -> str: ...
    def wait(self, tx_hash: str, timeout_s: float) -> TxOutcome | None: ...


class ChainSenders(Protocol):
    def sender_for(self, chain: Chain) -> SweepSender: ...


class DepositKeys(Protocol):
    """Deposit private keys by HD index (``SeedDepositKeys``)."""

    def private_key_at(self, index: int) -> bytes: ...
    def address_at(self, index: int) -> str: ...


@dataclass
class SweepReport:
    chain: str
    examined: int = 0
    below_dust: int = 0
    already_open: int = 0  # another sweeper holds the wallet+token (or just swept it)
    confirmed: int = 0
    awaiting_receipt: int = 0  # sent, receipt not seen yet: the next run confirms it
    failed: int = 0
    skipped: int = 0  # unreadable balance, unpinned token, or a key that does not match the address
    resumed_confirmed: int = 0
    abandoned: int = 0  # open sweeps an earlier run left behind too long, now failed (slot freed)
    gas_spent_wei: int = 0
    swept_units: dict[str, int] = field(default_factory=dict)  # token symbol → base units confirmed

    def as_metrics(self) -> dict[str, int]:
        return {
            "sweeps_examined": self.examined,
            "sweeps_below_dust": self.below_dust,
            "sweeps_already_open": self.already_open,
            "sweeps_confirmed": self.confirmed + self.resumed_confirmed,
            "sweeps_awaiting_receipt": self.awaiting_receipt,
            "sweeps_failed": self.failed,
            "sweeps_skipped": self.skipped,
            "sweeps_abandoned": self.abandoned,
        }


class Sweeper:
    def __init__(
        self,
        transactions: SweepTransactions,
        *,
        readers: ChainReaders,
        senders: ChainSenders,
        keys: DepositKeys,
        treasury_key: bytes,
        offramp_address: str,
        registry: Callable[[], ChainRegistry],
        policy: SweepPolicy = DEFAULT_POLICY,
    ) -> None:
        self._transactions = transactions
        self._readers = readers
        self._senders = senders
        self._keys = keys
        self._treasury_key = treasury_key
        self._offramp = offramp_address
        self._registry = registry
        self._policy = policy

    def __repr__(self) -> str:
        return f"Sweeper(offramp={self._offramp}, keys=<private>, treasury_key=<private>)"

    def sweep_chain(self, chain: str | Chain) -> SweepReport:
        """One pass over ``chain``: confirm earlier submissions, then sweep every wallet worth it."""
        chain = self._registry().chain(chain) if isinstance(chain, str) else chain
        report = SweepReport(chain.slug)
        sender = self._senders.sender_for(chain)
        self._resume_submitted(chain, sender, report)
        report.abandoned = self._transactions.run(
            lambda unit: unit.sweeps.fail_abandoned(
                chain.chain_id, self._policy.abandon_pending_after_s, self._policy.abandon_submitted_after_s
            )
        )
        targets = self._transactions.run(
            lambda unit: unit.sweeps.targets(chain.chain_id, self._policy.batch_limit)
        )
        for target in targets:
            report.examined += 1
            self._sweep_one(chain, sender, target, report)
        logger.info("chain sweep finished", extra={"chain": chain.slug, **report.as_metrics()})
        return report

    # ----------------------------------------------------------------- steps

    def _resume_submitted(self, chain: Chain, sender: SweepSender, report: SweepReport) -> None:
        pending = self._transactions.run(
            lambda unit: unit.sweeps.submitted(chain.chain_id, self._policy.batch_limit)
        )
        for sweep in pending:
            assert sweep.tx_hash is not None
            try:
                outcome = sender.wait(sweep.tx_hash, RESUME_WAIT_S)
            except SweepSendError:
                continue  # still unknown: the next run asks again
            if outcome is None:
                continue
            spent = sweep.gas_spent_wei + outcome.fee_wei
            if outcome.succeeded:
                self._mark_confirmed(sweep.id, spent)
                report.resumed_confirmed += 1
            else:
                self._mark_failed(sweep.id, "reverted", spent)
                report.failed += 1
            report.gas_spent_wei += outcome.fee_wei

    def _mark_confirmed(self, sweep_id: UUID, spent: int) -> None:
        self._transactions.run(lambda unit: unit.sweeps.mark_confirmed(sweep_id, spent))

    def _mark_failed(self, sweep_id: UUID, reason: str, spent: int) -> None:
        self._transactions.run(lambda unit: unit.sweeps.mark_failed(sweep_id, reason, spent))

    def _sweep_one(self, chain: Chain, sender: SweepSender, target: SweepTarget, report: SweepReport) -> None:
        sweep = self._claim(chain, target, report)
        if sweep is None:
            return
        try:
            if sweep.method is SweepMethod.EIP3009:
                outcome, spent = self._send_eip3009(sender, target, sweep)
            else:
                outcome, spent = self._send_with_gas_topup(sender, target, sweep)
        except _SweepFailed as failure:
            self._mark_failed(sweep.id, failure.reason, failure.gas_spent_wei)
            logger.warning(
                "sweep failed",
                extra={"sweep_id": str(sweep.id), "method": sweep.method.value, "error": failure.reason},
            )
            report.failed += 1
            report.gas_spent_wei += failure.gas_spent_wei
            return
        report.gas_spent_wei += spent
        if outcome is None:
            report.awaiting_receipt += 1
        elif outcome.succeeded:
            self._mark_confirmed(sweep.id, spent)
            report.confirmed += 1
            report.swept_units[target.token] = report.swept_units.get(target.token, 0) + sweep.amount_units
            logger.info(
                "swept",
                extra={
                    "sweep_id": str(sweep.id),
                    "wallet_id": str(target.wallet_id),
                    "method": sweep.method.value,
                    "token": target.token,
                    "amount_units": str(sweep.amount_units),
                    "tx_hash": outcome.tx_hash,
                    "gas_spent_wei": str(spent),
                },
            )
        else:
            self._mark_failed(sweep.id, "reverted", spent)
            report.failed += 1

    def _claim(self, chain: Chain, target: SweepTarget, report: SweepReport) -> Sweep | None:
        """A pending sweep of the wallet's whole balance, held by this run; ``None`` if nothing to do."""
        if not self._sweepable(chain, target):
            report.skipped += 1
            return None
        reader = self._readers.reader_for(chain)
        try:
            balance = reader.token_balance(target.token_address, target.address)
        except DependencyUnavailable:
            report.skipped += 1
            return None
        if not worth_sweeping(balance, target.token_decimals, self._policy):
            report.below_dust += 1
            return None
        method = sweep_method(target.token)
        sweep = Sweep(
            id=uuid4(),
            wallet_id=target.wallet_id,
            chain_id=chain.chain_id,
            token_address=target.token_address,
            from_address=target.address,
            to_address=self._offramp,
            method=method,
            amount_units=balance,
            authorization_nonce=secrets.token_bytes(32) if method is SweepMethod.EIP3009 else None,
            status=SweepStatus.PENDING,
        )
        if not self._transactions.run(lambda unit: unit.sweeps.claim(sweep)):
            report.already_open += 1
            return None
        # Under the claim nobody else moves this balance; a sweeper that finished just before
        # we claimed has already emptied it, which this second read sees.
        try:
            still_there = reader.token_balance(target.token_address, target.address)
        except DependencyUnavailable:
            still_there = 0
        if still_there < sweep.amount_units:
            self._transactions.run(lambda unit: unit.sweeps.release(sweep.id))
            report.already_open += 1
            return None
        return sweep

    def _sweepable(self, chain: Chain, target: SweepTarget) -> bool:
        pinned = chain.tokens.get(target.token)
        if pinned is None or pinned.address.lower() != target.token_address.lower():
            logger.error(
                "wallet token is not the pinned contract", extra={"wallet_id": str(target.wallet_id)}
            )
            return False
        if self._keys.address_at(target.hd_index).lower() != target.address.lower():
            logger.error(
                "the HD seed does not control this deposit address (wrong seed configured?)",
                extra={"wallet_id": str(target.wallet_id)},
            )
            return False
        return True

    def _send_eip3009(
        self, sender: SweepSender, target: SweepTarget, sweep: Sweep
    ) -> tuple[TxOutcome | None, int]:
        assert sweep.authorization_nonce is not None
        try:
            gas_price = gas_price_with_bump(sender.gas_price(), self._policy)
            valid_before = sender.latest_timestamp() + self._policy.authorization_ttl_s
            tx_hash = sender.send_authorized_transfer(
                token_address=target.token_address,
                holder_key=self._keys.private_key_at(target.hd_index),
                submitter_key=self._treasury_key,
                to_address=self._offramp,
                value=sweep.amount_units,
                nonce=sweep.authorization_nonce,
                valid_before=valid_before,
                gas_safety_percent=self._policy.gas_safety_percent,
                gas_price_wei=gas_price,
            )
        except SweepSendError as error:
            raise _SweepFailed(str(error), 0) from None
        return self._submitted_and_mined(sender, sweep, tx_hash, 0)

    def _send_with_gas_topup(
        self, sender: SweepSender, target: SweepTarget, sweep: Sweep
    ) -> tuple[TxOutcome | None, int]:
        spent = 0
        try:
            estimate = sender.estimate_transfer_gas(
                target.token_address, target.address, self._offramp, sweep.amount_units
            )
            plan = plan_gas_topup(
                estimate, sender.gas_price(), sender.eth_balance(target.address), self._policy
            )
            if plan.topup_wei:
                topup_tx = sender.send_eth(
                    sender_key=self._treasury_key,
                    to_address=target.address,
                    value_wei=plan.topup_wei,
                    gas_price_wei=plan.gas_price_wei,
                )
                self._transactions.run(
                    lambda unit: unit.sweeps.record_topup(sweep.id, topup_tx, plan.topup_wei, 0)
                )
                topup = sender.wait(topup_tx, self._policy.receipt_timeout_s)
                if topup is None:  # if it lands later, the next run finds the ETH and tops up less
                    raise _SweepFailed("gas top-up not mined in time", 0)
                spent = topup.fee_wei
                self._transactions.run(
                    lambda unit: unit.sweeps.record_topup(sweep.id, topup_tx, plan.topup_wei, spent)
                )
                if not topup.succeeded:
                    raise _SweepFailed("gas top-up reverted", spent)
            tx_hash = sender.send_token_transfer(
                token_address=target.token_address,
                holder_key=self._keys.private_key_at(target.hd_index),
                to_address=self._offramp,
                value=sweep.amount_units,
                gas_limit=plan.gas_limit,
                gas_price_wei=plan.gas_price_wei,
            )
        except SweepSendError as error:
            raise _SweepFailed(str(error), spent) from None
        return self._submitted_and_mined(sender, sweep, tx_hash, spent)

    def _submitted_and_mined(
        self, sender: SweepSender, sweep: Sweep, tx_hash: str, spent_before: int
    ) -> tuple[TxOutcome | None, int]:
        self._transactions.run(lambda unit: unit.sweeps.mark_submitted(sweep.id, tx_hash))
        try:
            outcome = sender.wait(tx_hash, self._policy.receipt_timeout_s)
        except SweepSendError:
            outcome = None  # sent: only its receipt is unknown; the next run asks again
        return outcome, spent_before + (outcome.fee_wei if outcome else 0)


class _SweepFailed(Exception):
    def __init__(self, reason: str, gas_spent_wei: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gas_spent_wei = gas_spent_wei
