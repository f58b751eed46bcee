"""Provisioning (every minute, and on request from finalize): runs the resource.* outbox rows.

Not reachable from the internet. Creates, suspends, resumes and deletes the purchases' cloud
resources (S3 buckets with their IAM users; docs/provisioning.md), each action as recorded,
resumable steps. Finalize invokes it asynchronously with ``{"purchase_id": …}`` to start at
once; the schedule sends ``{}`` (everything due). A run stops claiming a minute before its
timeout and gives unstarted rows back.
"""

from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.api.jobs import scheduled_job
from billing.api.provisioning_wiring import provisioning_worker
from billing.services.provisioning import ProvisionerInput


@scheduled_job("provisioner", unavailable_metric="ProvisionerUnavailable")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    """If the database is down, nothing was claimed, or claimed rows come back after their lease."""
    request = ProvisionerInput.model_validate(event)
    return (
        provisioning_worker()
        .run(
            time_left=lambda: timedelta(milliseconds=context.get_remaining_time_in_millis()),
            purchase_id=request.purchase_id,
        )
        .as_metrics()
    )
