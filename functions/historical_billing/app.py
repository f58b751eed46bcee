"""POST /purchase/{purchase_id}/historical-billing — the ledger per time bucket, JSON or CSV; customer key."""

from aws_lambda_powertools.event_handler import Response

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.billing_history_models import (
    HistoricalBillingBody,
    HistoricalBillingResponse,
    csv_response,
    json_response,
    success_response,
)
from billing.api.http import bearer_key, build_app, http_handler
from billing.api.openapi import BEARER_SECURITY, problem_responses
from billing.services.billing_history import BillingHistoryService

app = build_app()
history = BillingHistoryService(PostgresTransactions())


@app.post(
    "/purchase/<purchase_id>/historical-billing",
    responses={**problem_responses(400, 401, 422, 503), 200: success_response()},
    operation_id="getHistoricalBilling",
    security=BEARER_SECURITY,
    description=(
        "Usage cost, deposits, adjustments and balances per hour, day, week or month (UTC) from the "
        "ledger, with totals equal to the ledger's sums over the range; JSON or CSV."
    ),
)
def historical_billing(
    purchase_id: str, body: HistoricalBillingBody
) -> Response[HistoricalBillingResponse | str]:
    report = history.report(purchase_id, bearer_key(app), body.period, by_meter=body.by_meter)
    return csv_response(report) if body.format == "csv" else json_response(report)


lambda_handler = http_handler(app)
