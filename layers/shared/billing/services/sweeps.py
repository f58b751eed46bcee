"""Scheduled jobs (EventBridge Scheduler → the sweep function)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, model_validator

from billing.domain.chains import Chain, ChainRegistry
from billing.services.lifecycle import PurchaseLifecycle


class SweepJob(StrEnum):
    HOLDS_AND_BALANCES = "holds_and_balances"
    MAINTENANCE = "maintenance"
    #: Credit confirmed top-ups to purchases' deposit addresses on one chain, without any call.
    DEPOSITS = "deposits"


class SweepInput(BaseModel):
    """The schedule's ``Input``; anything else is refused."""

    model_config = ConfigDict(extra="forbid")

    job: SweepJob
    chain: str | None = None

    @model_validator(mode="after")
    def _chain_for_deposits(self) -> SweepInput:
        if (self.job is SweepJob.DEPOSITS) != (self.chain is not None):
            raise ValueError("the deposits job needs a chain, and only it takes one")
        return self


class TopupScanner(Protocol):
    def scan_topups(self, chain: Chain, *, limit: int = 200) -> int: ...


class Maintenance(Protocol):
    def ensure_usage_event_partitions(self, months_back: int = 2, months_ahead: int = 3) -> int: ...


def run_sweep(
    sweep: SweepInput,
    *,
    lifecycle: PurchaseLifecycle,
    maintenance: Callable[[], Maintenance],
    topups: Callable[[], TopupScanner],
    registry: Callable[[], ChainRegistry],
    now: datetime,
) -> dict[str, int]:
    """Run one job; every job is idempotent and safe to run twice at once."""
    if sweep.job is SweepJob.HOLDS_AND_BALANCES:
        return lifecycle.sweep(now)
    if sweep.job is SweepJob.DEPOSITS:
        assert sweep.chain is not None
        return {"topups_credited": topups().scan_topups(registry().chain(sweep.chain))}
    return {"usage_event_partitions_created": maintenance().ensure_usage_event_partitions()}
