"""Scheduled S3 usage estimates (every 15 minutes): provisional charges before the cost export.

Not reachable from the internet. Reads the provisioned buckets' CloudWatch storage and request
metrics (``cloudwatch:GetMetricData``) and posts the rise of each (bucket, day, kind) estimate
through the ledger, so a customer running past their balance is suspended within one run
(docs/usage-estimates.md). Buckets whose metrics cannot be read are skipped and counted.
"""

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.observability import logger, metrics, tracer
from billing.domain.errors import DependencyUnavailable
from billing.services.usage_estimator import UsageEstimator, UsageEstimatorInput


@cache
def _estimator() -> UsageEstimator:
    from billing.adapters.aws.cloudwatch_usage import CloudWatchUsageMetrics  # noqa: PLC0415 - boto3 loads only when used

    return UsageEstimator(PostgresTransactions(), CloudWatchUsageMetrics())


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    request = UsageEstimatorInput.model_validate(event)
    try:
        result = _estimator().run(datetime.now(UTC), lookback_days=request.lookback_days).as_metrics()
    except DependencyUnavailable as error:
        # The database is down: nothing was charged; the next window's cumulative totals catch up.
        logger.error("usage estimator could not run", extra={"reason": error.detail})
        result = {"UsageEstimatorUnavailable": 1}
    for name, count in result.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    return result
