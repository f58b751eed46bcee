"""POST /purchase/{purchase_id}/verify-topup — top-up verification (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import problem_responses

app = build_app()


@app.post("/purchase/<purchase_id>/verify-topup", responses=problem_responses(401, 501, 503))
def verify_topup(purchase_id: str) -> None:
    not_built("top-up verification")


lambda_handler = http_handler(app)
