"""POST /purchase/{purchase_id}/authorize — spend authorization holds (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import BEARER_SECURITY, problem_responses

app = build_app()


@app.post(
    "/purchase/<purchase_id>/authorize",
    responses=problem_responses(401, 402, 409, 422, 501, 503, success=None),
    operation_id="authorizeSpend",
    security=BEARER_SECURITY,
)
def authorize_spend(purchase_id: str) -> None:
    not_built("spend authorization holds")


lambda_handler = http_handler(app)
