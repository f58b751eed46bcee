"""POST /offer/{offer_id}/checkout/finalize — checkout finalization (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import problem_responses

app = build_app()


@app.post(
    "/offer/<offer_id>/checkout/finalize",
    responses=problem_responses(402, 404, 409, 422, 501, 503, success=None),
    operation_id="finalizeCheckout",
)
def finalize_checkout(offer_id: str) -> None:
    not_built("checkout finalization")


lambda_handler = http_handler(app)
