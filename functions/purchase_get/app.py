"""GET /purchase/{purchase_id} — the customer's view of a purchase (customer key)."""

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.http import bearer_key, build_app, http_handler
from billing.api.openapi import BEARER_SECURITY, problem_responses
from billing.api.purchase_models import PurchaseResponse
from billing.services.purchases import PurchaseReader

app = build_app()
purchases = PurchaseReader(PostgresTransactions())


@app.get(
    "/purchase/<purchase_id>",
    responses=problem_responses(400, 401, 503),
    operation_id="getPurchase",
    security=BEARER_SECURITY,
)
def get_purchase(purchase_id: str) -> PurchaseResponse:
    view = purchases.view_for_customer(purchase_id, bearer_key(app))
    return PurchaseResponse.from_view(view)


lambda_handler = http_handler(app)
