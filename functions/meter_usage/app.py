"""POST /purchase/{purchase_id}/meter-usage — usage metering (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import BEARER_SECURITY, problem_responses

app = build_app()


@app.post(
    "/purchase/<purchase_id>/meter-usage",
    responses=problem_responses(401, 402, 409, 422, 501, 503, success=None),
    operation_id="meterUsage",
    security=BEARER_SECURITY,
)
def meter_usage(purchase_id: str) -> None:
    not_built("usage metering")


lambda_handler = http_handler(app)
