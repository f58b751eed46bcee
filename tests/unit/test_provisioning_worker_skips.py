"""The provisioning worker's skip reasons when a purchase has no resource (an in-memory store)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from billing.domain.provisioning import PurchaseFacts, ResourceAction, ResourceJob, StatementRows
from billing.domain.purchase import PurchaseStatus
from billing.services.provisioning import ProvisioningWorker

NOW = datetime(2025, 1, 1, tzinfo=UTC)


class _ProvisioningWithoutResource:
    """One claimed job on a purchase whose resource was never made."""

    def __init__(self, job: ResourceJob, facts: PurchaseFacts) -> None:
        self._jobs = [job]
        self._facts = facts
        self.calls: list[str] = []
        self.skipped: list[str] = []

    def claim_jobs(self, *_: Any) -> list[ResourceJob]:
        jobs, self._jobs = self._jobs, []
        return jobs

    def purchase_facts(self, _: Any) -> PurchaseFacts:
        return self._facts

    def resource(self, _: Any) -> None:
        return None

    def rescue_pending(self, _: Any) -> bool:
        self.calls.append("rescue_pending")
        return False

    def statement_rows(self, *_: Any) -> StatementRows:
        self.calls.append("statement_rows")
        return StatementRows(total=1, pending=0, first_created_at=NOW)

    def settle_skipped(self, _: ResourceJob, reason: str) -> bool:
        self.skipped.append(reason)
        return True


class _Unit:
    def __init__(self, provisioning: _ProvisioningWithoutResource) -> None:
        self.provisioning = provisioning


class _Transactions:
    def __init__(self, unit: _Unit) -> None:
        self._unit = unit

    def run(self, work: Callable[[_Unit], Any]) -> Any:
        return work(self._unit)

    run_single_write = run


def _no_secrets() -> Any:
    raise AssertionError("no credentials are encrypted when nothing is provisioned")


@pytest.mark.parametrize(
    ("action", "reason", "safety_checked"),
    [
        (ResourceAction.SUSPEND, "no resource was provisioned for this purchase", False),
        (ResourceAction.RESUME, "no resource was provisioned for this purchase", False),
        (ResourceAction.DELETE, "no resource was provisioned for this purchase (final statement sent)", True),
    ],
)
def test_an_action_on_a_purchase_without_resource_is_skipped_with_its_reason(
    action: ResourceAction, reason: str, safety_checked: bool
) -> None:
    purchase_id = uuid4()
    job = ResourceJob(1, purchase_id, action, f"resource:{action.value}", {}, 1, NOW)
    facts = PurchaseFacts(purchase_id, "s3-standard", PurchaseStatus.TERMINATED, 0, 0, NOW, NOW, False, False)
    provisioning = _ProvisioningWithoutResource(job, facts)
    worker = ProvisioningWorker(
        _Transactions(_Unit(provisioning)),  # type: ignore[arg-type]
        provisioners={},
        secrets=_no_secrets,
        clock=lambda: NOW,
    )

    outcome = worker.run(time_left=lambda: timedelta(minutes=5))

    assert (outcome.skipped, outcome.done, outcome.retried) == (1, 0, 0)
    assert provisioning.skipped == [reason]
    # Deletion passes termination safety (pending top-up, final statement) before anything else.
    assert provisioning.calls == (["rescue_pending", "statement_rows"] if safety_checked else [])
