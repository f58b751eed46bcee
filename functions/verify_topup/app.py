"""POST /purchase/{purchase_id}/verify-topup — credit new confirmed top-up transfers, each exactly once."""

from billing.api.checkout_models import TopupResponse
from billing.api.checkout_wiring import checkout_service
from billing.api.http import bearer_key, build_app, http_handler
from billing.api.openapi import BEARER_SECURITY, problem_responses

app = build_app()
checkout = checkout_service()


@app.post(
    "/purchase/<purchase_id>/verify-topup",
    responses=problem_responses(400, 401, 404, 503),
    operation_id="verifyTopup",
    security=BEARER_SECURITY,
)
def verify_topup(purchase_id: str) -> TopupResponse:
    return TopupResponse.of(checkout.verify_topup(purchase_id, bearer_key(app)))


lambda_handler = http_handler(app)
