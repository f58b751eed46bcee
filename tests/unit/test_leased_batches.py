"""The run loop shared by the outbox dispatcher and the provisioning worker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from billing.services.leased_batches import handle_due_batches

RESERVE = timedelta(seconds=30)


class Queue:
    """Due rows served in batches; rows the handler fails stay due (as if waiting for a retry)."""

    def __init__(self, rows: list[int], batch_size: int, failing: frozenset[int] = frozenset()) -> None:
        self.due = list(rows)
        self.batch_size = batch_size
        self.failing = failing
        self.claims = 0
        self.handled: list[int] = []
        self.finished: list[int] = []
        self.released: list[int] = []

    def claim(self) -> list[int]:
        self.claims += 1
        ready = [row for row in self.due if not (row in self.failing and row in self.handled)]
        return ready[: self.batch_size]

    def handle(self, row: int) -> None:
        self.handled.append(row)
        if row not in self.failing:
            self.finished.append(row)
            self.due.remove(row)

    def release(self, row: int) -> bool:
        self.released.append(row)
        return True

    def run(self, time_left: Callable[[], timedelta]) -> int:
        return handle_due_batches(
            claim=self.claim,
            handle=self.handle,
            release=self.release,
            settled=lambda: len(self.finished),
            time_left=time_left,
            reserve=RESERVE,
        )


def test_claims_again_while_batches_finish_rows_and_stops_when_one_finishes_none() -> None:
    queue = Queue([1, 2, 3, 4, 5], batch_size=2, failing=frozenset({5}))

    given_back = queue.run(lambda: timedelta(minutes=5))

    assert queue.finished == [1, 2, 3, 4]
    assert queue.handled == [1, 2, 3, 4, 5]  # the failing row is tried once, then waits
    assert queue.claims == 3  # [1, 2], [3, 4], then [5] finishes nothing: stop
    assert given_back == 0 and queue.released == []


def test_rows_claimed_when_time_runs_out_are_given_back_untried_and_counted() -> None:
    queue = Queue([1, 2, 3, 4], batch_size=4)
    budget = iter(timedelta(seconds=seconds) for seconds in (100, 100, 100, 10))

    given_back = queue.run(lambda: next(budget))

    assert queue.handled == [1, 2]
    assert queue.released == [3, 4] and given_back == 2


def test_nothing_is_claimed_with_less_time_left_than_the_reserve() -> None:
    queue = Queue([1], batch_size=1)

    given_back = queue.run(lambda: RESERVE)

    assert queue.claims == 0 and queue.handled == [] and given_back == 0
