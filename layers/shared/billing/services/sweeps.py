"""Scheduled jobs (EventBridge Scheduler → the sweep function)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from billing.services.ledger import LedgerService


class SweepJob(StrEnum):
    HOLDS_AND_BALANCES = "holds_and_balances"
    MAINTENANCE = "maintenance"


class SweepInput(BaseModel):
    """The schedule's ``Input``; anything else is refused."""

    model_config = ConfigDict(extra="forbid")

    job: SweepJob


class Maintenance(Protocol):
    def ensure_usage_event_partitions(self, months_back: int = 1, months_ahead: int = 3) -> int: ...


def run_sweep(
    job: SweepJob,
    *,
    ledger: LedgerService,
    maintenance: Callable[[], Maintenance],
    now: datetime,
) -> dict[str, int]:
    """Run one job; every job is idempotent and safe to run twice at once."""
    if job is SweepJob.HOLDS_AND_BALANCES:
        return {"holds_expired": ledger.expire_due_holds(now)}
    return {"usage_event_partitions_created": maintenance().ensure_usage_event_partitions()}
