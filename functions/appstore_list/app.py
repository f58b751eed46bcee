"""GET /appstore/list/{list_id} — one app-store list with summaries of its available offers."""

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.catalog_models import AppstoreListResponse
from billing.api.http import build_app, http_handler, public_base_url
from billing.api.openapi import problem_responses
from billing.services.catalog import CatalogReader

app = build_app()
catalog = CatalogReader(PostgresTransactions())


@app.get(
    "/appstore/list/<list_id>",
    cache_control="public, max-age=60",
    responses=problem_responses(404, 503),
    operation_id="getAppstoreList",
)
def get_appstore_list(list_id: str) -> AppstoreListResponse:
    appstore_list, offers = catalog.appstore_list(list_id)
    return AppstoreListResponse.of(appstore_list, offers, public_base_url(app))


lambda_handler = http_handler(app)
