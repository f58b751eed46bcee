"""POST /offer/{offer_id}/checkout/wallet/create — a fresh deposit address for this checkout."""

from billing.api.checkout_models import CreateWalletBody, WalletCreatedResponse
from billing.api.checkout_wiring import checkout_service
from billing.api.http import build_app, http_handler
from billing.api.openapi import problem_responses

app = build_app()
checkout = checkout_service()


@app.post(
    "/offer/<offer_id>/checkout/wallet/create",
    status_code=201,
    responses=problem_responses(400, 404, 503, success=201),
    operation_id="createCheckoutWallet",
)
def create_checkout_wallet(offer_id: str, body: CreateWalletBody) -> WalletCreatedResponse:
    created = checkout.create_wallet(
        offer_id,
        chain=body.chain,
        token=body.token,
        min_target_nano=body.min_target_balance,
        customer=body.customer(),
    )
    return WalletCreatedResponse.of(created)


lambda_handler = http_handler(app)
