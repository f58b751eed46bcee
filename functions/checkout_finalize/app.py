"""POST /offer/{offer_id}/checkout/finalize — turn a paid checkout into a purchase (exactly once)."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Header

from billing.api.checkout_models import FinalizeBody, FinalizedResponse
from billing.api.checkout_wiring import checkout_service
from billing.api.http import build_app, http_handler
from billing.api.openapi import problem_responses
from billing.api.provisioning_wiring import provisioning_wait, resource_handoff

app = build_app()
# Finalize starts provisioning (async invoke) and waits a bounded time for it; never cloud-admin itself.
checkout = checkout_service(provisioning=resource_handoff(kick=True), provisioning_wait=provisioning_wait())


@app.post(
    "/offer/<offer_id>/checkout/finalize",
    status_code=201,
    responses=problem_responses(400, 402, 404, 409, 503, success=201),
    operation_id="finalizeCheckout",
)
def finalize_checkout(
    offer_id: str,
    body: FinalizeBody,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="idempotency-key",
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="Replays return the same answer",
        ),
    ] = None,
) -> FinalizedResponse:
    return FinalizedResponse.of(checkout.finalize(offer_id, body.to_request(), idempotency_key))


lambda_handler = http_handler(app)
