"""GET /purchase/{purchase_id} — the customer's view of a purchase (customer key)."""

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.http import bearer_key, build_app, http_handler
from billing.api.openapi import BEARER_SECURITY, problem_responses
from billing.api.provisioning_wiring import resource_handoff
from billing.api.purchase_models import PurchaseResponse
from billing.services.purchases import PurchaseReader

app = build_app()
# The resource's status, and its credentials once (the first read after provisioning finished).
purchases = PurchaseReader(PostgresTransactions(), resource_handoff())


@app.get(
    "/purchase/<purchase_id>",
    responses=problem_responses(400, 401, 503),
    operation_id="getPurchase",
    security=BEARER_SECURITY,
)
def get_purchase(purchase_id: str) -> PurchaseResponse:
    return PurchaseResponse.from_details(purchases.details_for_customer(purchase_id, bearer_key(app)))


lambda_handler = http_handler(app)
