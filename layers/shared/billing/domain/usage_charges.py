"""What a usage store writes for meter-usage, and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing.domain.ledger import LedgerOperation
from billing.domain.purchase import PurchaseView


@dataclass(frozen=True)
class UsageCharge:
    """One event ready to be written: its ledger debit and its usage row."""

    operation: LedgerOperation
    occurred_at: datetime
    cost_nano: int
    description: str | None
    usage_metadata: dict[str, Any]


@dataclass(frozen=True)
class ChargedEntry:
    entry_id: int
    amount_nano: int
    replayed: bool


@dataclass(frozen=True)
class ChargedBatch:
    """What one batch write did (an entry per charge, in order), and the purchase right after it."""

    entries: list[ChargedEntry]
    purchase: PurchaseView
