"""The run loop of the leased work queues (outbox dispatcher, provisioning worker).

Both claim a batch of due rows under a lease, handle them one by one, and give the
rest back when the run is nearly out of time, so another run takes them at once
instead of after the lease.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

Row = TypeVar("Row")


def handle_due_batches(
    *,
    claim: Callable[[], Sequence[Row]],
    handle: Callable[[Row], None],
    release: Callable[[Row], bool],
    settled: Callable[[], int],
    time_left: Callable[[], timedelta],
    reserve: timedelta,
) -> int:
    """Claim and handle batches until one settles nothing or less than ``reserve`` is left.

    ``settled`` counts the rows finished for good so far: a batch that finished some is followed
    by another claim (rows queued behind them may be due now); one that finished none means
    nothing is due, or only rows that must wait for their retry time. Returns how many claimed
    rows were given back for lack of time.
    """
    while time_left() > reserve:
        batch = claim()
        settled_before = settled()
        for index, row in enumerate(batch):
            if time_left() <= reserve:
                return sum(release(unhandled) for unhandled in batch[index:])
            handle(row)
        if settled() == settled_before:
            break
    return 0
