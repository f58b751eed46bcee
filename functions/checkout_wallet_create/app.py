"""POST /offer/{offer_id}/checkout/wallet/create — checkout wallets (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import problem_responses

app = build_app()


@app.post(
    "/offer/<offer_id>/checkout/wallet/create",
    responses=problem_responses(404, 422, 501, 503, success=None),
    operation_id="createCheckoutWallet",
)
def create_checkout_wallet(offer_id: str) -> None:
    not_built("checkout wallets")


lambda_handler = http_handler(app)
