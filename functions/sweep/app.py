"""Scheduled sweeps: purchases (every minute), top-ups per chain, partitions (hourly)."""

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.adapters.postgres.connection import shared_connection
from billing.adapters.postgres.maintenance import PostgresMaintenance
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.checkout_wiring import checkout_service
from billing.api.observability import logger, metrics, tracer
from billing.domain.chains import chain_registry
from billing.services.lifecycle import PurchaseLifecycle
from billing.services.sweeps import SweepInput, run_sweep

lifecycle = PurchaseLifecycle(PostgresTransactions())


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    sweep = SweepInput.model_validate(event)
    outcome = run_sweep(
        sweep,
        lifecycle=lifecycle,
        maintenance=lambda: PostgresMaintenance(shared_connection()),
        topups=checkout_service,
        registry=chain_registry,
        now=datetime.now(UTC),
    )
    for name, count in outcome.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    logger.info("sweep finished", extra={"job": sweep.job.value, **outcome})
    return outcome
