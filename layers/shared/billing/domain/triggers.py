"""Balance triggers: which status a balance gives a purchase, and what OfficeX calls it.

The rule runs in Postgres (migration 0007, ``purchase_status_for``) inside every
statement that changes a balance; this module is the same rule in Python, the
readable specification that tests hold the SQL to.

Downward, a threshold is crossed when the balance reaches it (``balance <=
threshold``). Upward, the balance must clear the threshold by the hysteresis
margin, so usage hovering at a threshold does not notify on every call.
Terminated is final.
"""

from __future__ import annotations

from billing.domain.purchase import PurchaseStatus, Triggers

MIN_HYSTERESIS_NANO = 10_000_000  # one cent

_BY_RANK = (
    PurchaseStatus.ACTIVE,
    PurchaseStatus.LOW,
    PurchaseStatus.CRITICAL,
    PurchaseStatus.SUSPENDED,
    PurchaseStatus.TERMINATED,
)

#: OfficeX purchase record status for each of ours (``POST …/purchases/update``).
OFFICEX_STATUS = {
    PurchaseStatus.ACTIVE: "RUNNING",
    PurchaseStatus.LOW: "PAYMENT_REQUIRED",
    PurchaseStatus.CRITICAL: "PAYMENT_REQUIRED",
    PurchaseStatus.SUSPENDED: "BLOCKED",
    PurchaseStatus.TERMINATED: "CANCELED",
}


def hysteresis_nano(triggers: Triggers) -> int:
    """5 % of the low trigger, at least one cent."""
    return max(triggers.low_nano // 20, MIN_HYSTERESIS_NANO)


def _balance_rank(balance_nano: int, low: int, critical: int, termination: int) -> int:
    if balance_nano <= termination:
        return 3
    if balance_nano <= critical:
        return 2
    if balance_nano <= low:
        return 1
    return 0


def status_for(current: PurchaseStatus, balance_nano: int, triggers: Triggers) -> PurchaseStatus:
    """The status a purchase in ``current`` moves to when its balance becomes ``balance_nano``."""
    if current is PurchaseStatus.TERMINATED:
        return current
    margin = hysteresis_nano(triggers)
    deserved = _balance_rank(
        balance_nano, triggers.low_nano, triggers.critical_nano, triggers.termination_nano
    )
    recovered_to = _balance_rank(
        balance_nano,
        triggers.low_nano + margin,
        triggers.critical_nano + margin,
        triggers.termination_nano + margin,
    )
    return _BY_RANK[max(deserved, min(_BY_RANK.index(current), recovered_to))]
