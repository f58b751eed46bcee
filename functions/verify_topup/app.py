"""POST /purchase/{purchase_id}/verify-topup — top-up verification (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import BEARER_SECURITY, problem_responses

app = build_app()


@app.post(
    "/purchase/<purchase_id>/verify-topup",
    responses=problem_responses(401, 501, 503, success=None),
    operation_id="verifyTopup",
    security=BEARER_SECURITY,
)
def verify_topup(purchase_id: str) -> None:
    not_built("top-up verification")


lambda_handler = http_handler(app)
