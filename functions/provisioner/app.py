"""Provisioning (every minute, and on request from finalize): runs the resource.* outbox rows.

Not reachable from the internet. Creates, suspends, resumes and deletes the purchases' cloud
resources (S3 buckets with their IAM users; docs/provisioning.md), each action as recorded,
resumable steps. Finalize invokes it asynchronously with ``{"purchase_id": …}`` to start at
once; the schedule sends ``{}`` (everything due). A run stops claiming a minute before its
timeout and gives unstarted rows back.
"""

from datetime import timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.api.observability import logger, metrics, tracer
from billing.api.provisioning_wiring import provisioning_worker
from billing.domain.errors import DependencyUnavailable
from billing.services.provisioning import ProvisionerInput


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    request = ProvisionerInput.model_validate(event)
    try:
        outcome = provisioning_worker().run(
            time_left=lambda: timedelta(milliseconds=context.get_remaining_time_in_millis()),
            purchase_id=request.purchase_id,
        )
        result = outcome.as_metrics()
    except DependencyUnavailable as error:
        # The database is down: nothing was claimed, or claimed rows come back after their lease.
        logger.error("provisioner could not run", extra={"reason": error.detail})
        result = {"ProvisionerUnavailable": 1}
    for name, count in result.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    logger.info("provisioner run done", extra=result)
    return result
