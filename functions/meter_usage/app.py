"""POST /purchase/{purchase_id}/meter-usage — charge usage against the prepaid balance (vendor key)."""

from datetime import UTC, datetime
from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.http import bearer_key, build_app, http_handler
from billing.api.metering_models import MeterUsageBody, MeterUsageResponse, events_of
from billing.api.openapi import BEARER_SECURITY, problem_responses
from billing.services.metering import MeteringService

app = build_app()
metering = MeteringService(PostgresTransactions())


@app.post(
    "/purchase/<purchase_id>/meter-usage",
    responses=problem_responses(400, 401, 409, 503),
    operation_id="meterUsage",
    security=BEARER_SECURITY,
)
def meter_usage(purchase_id: str, body: Annotated[MeterUsageBody, Body()]) -> MeterUsageResponse:
    outcome = metering.meter(purchase_id, bearer_key(app), events_of(body))
    return MeterUsageResponse.of(outcome, datetime.now(UTC))


lambda_handler = http_handler(app)
