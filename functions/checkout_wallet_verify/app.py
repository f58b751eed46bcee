"""POST /offer/{offer_id}/checkout/wallet/{wallet_id}/verify — re-scan the chain, report payment status."""

from uuid import UUID

from billing.api.checkout_models import WalletStatusResponse
from billing.api.checkout_wiring import checkout_service
from billing.api.http import build_app, http_handler
from billing.api.openapi import problem_responses
from billing.domain.errors import NotFound

app = build_app()
checkout = checkout_service()


@app.post(
    "/offer/<offer_id>/checkout/wallet/<wallet_id>/verify",
    responses=problem_responses(404, 503),
    operation_id="verifyCheckoutWallet",
)
def verify_checkout_wallet(offer_id: str, wallet_id: str) -> WalletStatusResponse:
    try:
        parsed = UUID(wallet_id)
    except ValueError:
        raise NotFound("no such checkout wallet for this offer") from None
    return WalletStatusResponse.of(checkout.verify(offer_id, parsed))


lambda_handler = http_handler(app)
