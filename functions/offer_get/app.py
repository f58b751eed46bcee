"""GET /offer/{offer_id} — offers (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import problem_responses

app = build_app()


@app.get(
    "/offer/<offer_id>",
    responses=problem_responses(404, 501),
    operation_id="getOffer",
)
def get_offer(offer_id: str) -> None:
    not_built("offers")


lambda_handler = http_handler(app)
