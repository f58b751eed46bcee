"""Ledger rules: what an operation is, how it is fingerprinted, how a replay is decided.

Every balance change is one ledger entry. ``amount_nano`` is the signed change
of the balance, ``held_delta_nano`` the signed change of the held amount, so
for every purchase ``balance == Σ amount_nano`` and ``held == Σ held_delta_nano``.
An operation is idempotent on ``(purchase_id, idempotency_key)``: the same key
with the same fingerprint is a replay, with another fingerprint a conflict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from billing.domain.errors import IdempotencyConflict, InvalidRequest
from billing.domain.money import check_amount_nano

MAX_IDEMPOTENCY_KEY_LENGTH = 200


class EntryKind(StrEnum):
    DEPOSIT = "deposit"
    USAGE = "usage"
    HOLD = "hold"
    RELEASE = "release"
    ADJUSTMENT = "adjustment"
    REVERSAL = "reversal"
    #: a provisional usage charge (S3 from CloudWatch metrics), reversed when the cost export bills it
    ESTIMATE = "estimate"


@dataclass(frozen=True)
class LedgerOperation:
    """One requested change; build it with the constructors below, not directly."""

    purchase_id: UUID
    idempotency_key: str
    kind: EntryKind
    amount_nano: int = 0
    held_delta_nano: int = 0
    #: the operation applies only if ``balance - held >= required_available_nano``
    required_available_nano: int | None = None
    hold_id: UUID | None = None
    hold_expires_at: datetime | None = None
    #: what a RELEASE makes of the hold: "released" (given back) or "captured" (settled by usage)
    hold_outcome: str | None = None
    source: str = "api"
    meter: str | None = None
    quantity: str | None = None
    unit: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """SHA-256 over what defines the request, so a replay can be told from a reuse."""
        canonical = {
            "kind": self.kind.value,
            "amount_nano": self.amount_nano,
            "held_delta_nano": self.held_delta_nano,
            "hold_id": str(self.hold_id) if self.hold_id else None,
            "hold_outcome": self.hold_outcome,
            "meter": self.meter,
            "quantity": self.quantity,
            "unit": self.unit,
            "metadata": self.metadata,
        }
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class LedgerReceipt:
    """What an applied (or replayed) operation did."""

    entry_id: int
    purchase_id: UUID
    kind: EntryKind
    amount_nano: int
    held_delta_nano: int
    balance_after_nano: int
    held_after_nano: int
    fingerprint: str
    hold_id: UUID | None = None
    replayed: bool = False


@dataclass(frozen=True)
class HoldState:
    status: str  # active | captured | released | expired
    amount_nano: int
    expires_at: datetime


@dataclass(frozen=True)
class Funds:
    balance_nano: int
    held_nano: int

    @property
    def available_nano(self) -> int:
        return self.balance_nano - self.held_nano


def _check_key(idempotency_key: str) -> str:
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidRequest(f"idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    if not idempotency_key.isprintable():
        raise InvalidRequest("idempotency key must be printable text")
    return idempotency_key


def credit(
    purchase_id: UUID,
    amount_nano: int,
    idempotency_key: str,
    *,
    kind: EntryKind = EntryKind.DEPOSIT,
    source: str = "api",
    metadata: dict[str, Any] | None = None,
) -> LedgerOperation:
    """Money in: a confirmed deposit or a positive correction."""
    if kind not in (EntryKind.DEPOSIT, EntryKind.ADJUSTMENT, EntryKind.REVERSAL):
        raise InvalidRequest(f"a credit cannot be of kind {kind}")
    return LedgerOperation(
        purchase_id=purchase_id,
        idempotency_key=_check_key(idempotency_key),
        kind=kind,
        amount_nano=check_amount_nano(amount_nano, allow_zero=False),
        source=source,
        metadata=metadata or {},
    )


def debit(
    purchase_id: UUID,
    amount_nano: int,
    idempotency_key: str,
    *,
    require_available: bool = True,
    source: str = "api",
    meter: str | None = None,
    quantity: str | None = None,
    unit: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> LedgerOperation:
    """Money out for usage.

    With ``require_available`` the debit fails unless ``balance - held`` covers
    it; without, usage that already happened is recorded even if it overdraws.
    """
    amount = check_amount_nano(amount_nano, allow_zero=False)
    return LedgerOperation(
        purchase_id=purchase_id,
        idempotency_key=_check_key(idempotency_key),
        kind=EntryKind.USAGE,
        amount_nano=-amount,
        required_available_nano=amount if require_available else None,
        source=source,
        meter=meter,
        quantity=quantity,
        unit=unit,
        metadata=metadata or {},
    )


def estimate(
    purchase_id: UUID,
    amount_nano: int,
    idempotency_key: str,
    *,
    source: str = "usage-estimator",
    meter: str | None = None,
    quantity: str | None = None,
    unit: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> LedgerOperation:
    """Money out for usage estimated before its bill arrives; recorded even if it overdraws.

    A debit like :func:`debit` without funds check (the usage already happened), of kind
    ``estimate`` so reports can tell provisional charges from billed ones.
    """
    usage = debit(
        purchase_id,
        amount_nano,
        idempotency_key,
        require_available=False,
        source=source,
        meter=meter,
        quantity=quantity,
        unit=unit,
        metadata=metadata,
    )
    return replace(usage, kind=EntryKind.ESTIMATE)


def adjustment(
    purchase_id: UUID,
    amount_nano: int,
    idempotency_key: str,
    *,
    reason: str,
    source: str = "operator",
) -> LedgerOperation:
    """An operator correction in either direction; it must say why."""
    if not reason.strip():
        raise InvalidRequest("an adjustment needs a reason")
    amount = check_amount_nano(amount_nano, allow_negative=True, allow_zero=False)
    return LedgerOperation(
        purchase_id=purchase_id,
        idempotency_key=_check_key(idempotency_key),
        kind=EntryKind.ADJUSTMENT,
        amount_nano=amount,
        source=source,
        metadata={"reason": reason},
    )


def place_hold(
    purchase_id: UUID,
    hold_id: UUID,
    amount_nano: int,
    expires_at: datetime,
    idempotency_key: str,
    *,
    source: str = "api",
    metadata: dict[str, Any] | None = None,
) -> LedgerOperation:
    """Reserve funds; fails unless ``balance - held`` covers the amount."""
    amount = check_amount_nano(amount_nano, allow_zero=False)
    if expires_at.tzinfo is None:
        raise InvalidRequest("hold expiry must carry a time zone")
    return LedgerOperation(
        purchase_id=purchase_id,
        idempotency_key=_check_key(idempotency_key),
        kind=EntryKind.HOLD,
        held_delta_nano=amount,
        required_available_nano=amount,
        hold_id=hold_id,
        hold_expires_at=expires_at,
        source=source,
        metadata=metadata or {},
    )


def release_hold(
    purchase_id: UUID, hold_id: UUID, idempotency_key: str, *, captured: bool = False, source: str = "api"
) -> LedgerOperation:
    """Give back a whole active hold; its amount comes from the hold itself.

    ``captured`` marks the hold settled by a usage charge (recorded separately)
    rather than given back unused; either way the held amount is freed.
    """
    return LedgerOperation(
        purchase_id=purchase_id,
        idempotency_key=_check_key(idempotency_key),
        kind=EntryKind.RELEASE,
        hold_id=hold_id,
        hold_outcome="captured" if captured else "released",
        source=source,
    )


def expired_hold_key(hold_id: UUID) -> str:
    """The idempotency key under which the sweep releases an expired hold."""
    return f"hold-expired:{hold_id}"


def replay_or_conflict(operation: LedgerOperation, recorded: LedgerReceipt) -> LedgerReceipt:
    """Decide what an already used idempotency key means for ``operation``."""
    if recorded.fingerprint != operation.fingerprint():
        raise IdempotencyConflict(
            "this idempotency key was already used for a different request",
            extra={"idempotency_key": operation.idempotency_key},
        )
    return replace(recorded, replayed=True)
