"""POST /offer/{offer_id}/checkout/wallet/{wallet_id}/verify — payment verification.

501 until its issue lands.
"""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import problem_responses

app = build_app()


@app.post(
    "/offer/<offer_id>/checkout/wallet/<wallet_id>/verify",
    responses=problem_responses(404, 501, 503, success=None),
    operation_id="verifyCheckoutWallet",
)
def verify_checkout_wallet(offer_id: str, wallet_id: str) -> None:
    not_built("payment verification")


lambda_handler = http_handler(app)
