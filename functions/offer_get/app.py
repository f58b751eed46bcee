"""GET /offer/{offer_id} — the public offer: pricing, minimum deposit, payment options, triggers."""

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.catalog_models import PublicOffer
from billing.api.http import build_app, http_handler
from billing.api.openapi import problem_responses
from billing.services.catalog import CatalogReader

app = build_app()
catalog = CatalogReader(PostgresTransactions())


@app.get(
    "/offer/<offer_id>",
    cache_control="public, max-age=60",
    responses=problem_responses(404, 503),
    operation_id="getOffer",
)
def get_offer(offer_id: str) -> PublicOffer:
    return PublicOffer.of(catalog.public_offer(offer_id))


lambda_handler = http_handler(app)
