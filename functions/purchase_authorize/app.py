"""POST /purchase/{purchase_id}/authorize — reserve funds before an expensive call (vendor key)."""

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.holds_models import AuthorizeBody, AuthorizeResponse
from billing.api.http import bearer_key, build_app, http_handler
from billing.api.openapi import BEARER_SECURITY, problem_responses
from billing.services.holds import SpendAuthorizations

app = build_app()
authorizations = SpendAuthorizations(PostgresTransactions())


@app.post(
    "/purchase/<purchase_id>/authorize",
    status_code=201,
    responses=problem_responses(400, 401, 402, 409, 503, success=201),
    operation_id="authorizeSpend",
    security=BEARER_SECURITY,
)
def authorize_spend(purchase_id: str, body: AuthorizeBody) -> AuthorizeResponse:
    hold = authorizations.authorize(purchase_id, bearer_key(app), body.to_request())
    return AuthorizeResponse.of(hold)


lambda_handler = http_handler(app)
