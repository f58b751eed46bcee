"""Scheduled S3 usage estimates (every 15 minutes): provisional charges before the cost export.

Not reachable from the internet. Reads the provisioned buckets' CloudWatch storage and request
metrics (``cloudwatch:GetMetricData``) and posts the rise of each (bucket, day, kind) estimate
through the ledger, so a customer running past their balance is suspended within one run
(docs/usage-estimates.md). Buckets whose metrics cannot be read are skipped and counted.
"""

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.jobs import scheduled_job
from billing.services.usage_estimator import UsageEstimator, UsageEstimatorInput


@cache
def _estimator() -> UsageEstimator:
    from billing.adapters.aws.cloudwatch_usage import CloudWatchUsageMetrics  # noqa: PLC0415 - boto3 loads only when used

    return UsageEstimator(PostgresTransactions(), CloudWatchUsageMetrics())


@scheduled_job("usage estimator", unavailable_metric="UsageEstimatorUnavailable")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    """If the database is down, nothing was charged; the next window's cumulative totals catch up."""
    request = UsageEstimatorInput.model_validate(event)
    return _estimator().run(datetime.now(UTC), lookback_days=request.lookback_days).as_metrics()
