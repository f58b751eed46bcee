"""POST /purchase/{purchase_id}/historical-billing — historical billing (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import BEARER_SECURITY, problem_responses

app = build_app()


@app.post(
    "/purchase/<purchase_id>/historical-billing",
    responses=problem_responses(401, 422, 501, 503, success=None),
    operation_id="getHistoricalBilling",
    security=BEARER_SECURITY,
)
def historical_billing(purchase_id: str) -> None:
    not_built("historical billing")


lambda_handler = http_handler(app)
