"""An in-memory ``StepLog`` (the Postgres one lives with the provisioning worker).

Outcomes round-trip through JSON, as they would through a ``jsonb`` column, and a step recorded
twice is a test failure: provisioners must consult ``outcome`` before recording.
"""

from __future__ import annotations

import json
from typing import Any


class SimulatedCrash(BaseException):
    """The process dying at a chosen point (a ``BaseException``: nothing in the code may catch it)."""


class MemoryStepLog:
    def __init__(self) -> None:
        self.outcomes: dict[str, dict[str, Any]] = {}
        #: Crash when ``record(step)`` is called, before (``"before"``) or after (``"after"``) storing it.
        self.crash_at: tuple[str, str] | None = None

    def outcome(self, step: str) -> dict[str, Any] | None:
        stored = self.outcomes.get(step)
        return None if stored is None else json.loads(json.dumps(stored))

    def record(self, step: str, outcome: dict[str, Any]) -> None:
        if self.crash_at == (step, "before"):
            self.crash_at = None
            raise SimulatedCrash(f"crashed before recording {step}")
        assert step not in self.outcomes, f"step {step!r} recorded twice"
        self.outcomes[step] = json.loads(json.dumps(outcome))
        if self.crash_at == (step, "after"):
            self.crash_at = None
            raise SimulatedCrash(f"crashed after recording {step}")

    def dump(self) -> str:
        return json.dumps(self.outcomes, sort_keys=True)
