"""The one handler shape of the scheduled (or internally invoked) job functions.

A job returns counts; each becomes a CloudWatch metric and the run's log line. A job whose
dependency is down (``DependencyUnavailable``: database, RPC, secrets) has written nothing
half-way; it is logged as an error and counted as ``<unavailable_metric>`` (what an alarm
watches), and the next scheduled run tries again. Bad input is not caught: it fails the
invocation, as it should.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.api.observability import logger, metrics, tracer
from billing.domain.errors import DependencyUnavailable

JobRun = Callable[[dict[str, Any], LambdaContext], Mapping[str, int]]
JobHandler = Callable[[dict[str, Any], LambdaContext], dict[str, int]]


def scheduled_job(job: str, *, unavailable_metric: str) -> Callable[[JobRun], JobHandler]:
    def wrap(run: JobRun) -> JobHandler:
        @logger.inject_lambda_context(clear_state=True)
        @tracer.capture_lambda_handler(capture_response=False)
        @metrics.log_metrics
        def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
            try:
                result = dict(run(event, context))
            except DependencyUnavailable as error:
                logger.error(f"{job} could not run", extra={"reason": error.detail})
                result = {unavailable_metric: 1}
            for name, count in result.items():
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
            logger.info(f"{job} done", extra=result)
            return result

        return cast(JobHandler, lambda_handler)

    return wrap
