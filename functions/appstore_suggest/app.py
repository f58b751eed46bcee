"""GET /appstore/suggest — app-store lists ranked for the customer's context, each with its reasons."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Query

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.catalog_models import (
    COUNTRY_PATTERN,
    KEYBOARD_PATTERN,
    LanguageRange,
    SuggestResponse,
    Wish,
    customer_context,
)
from billing.api.http import build_app, http_handler, public_base_url
from billing.api.openapi import problem_responses
from billing.services.catalog import CatalogReader

app = build_app()
catalog = CatalogReader(PostgresTransactions())


@app.get("/appstore/suggest", responses=problem_responses(503), operation_id="suggestLists")
def suggest_lists(
    country: Annotated[str | None, Query(pattern=COUNTRY_PATTERN, description="ISO 3166-1 alpha-2")] = None,
    # API Gateway splits comma-separated values, so Accept-Language lists arrive as items.
    language: Annotated[
        list[LanguageRange] | None,
        Query(max_length=12, description="Accept-Language entries, e.g. de-DE,en;q=0.5"),
    ] = None,
    keyboard: Annotated[
        str | None, Query(pattern=KEYBOARD_PATTERN, description="layout, e.g. de or de-ch")
    ] = None,
    profession: Annotated[str | None, Query(max_length=100)] = None,
    preferences: Annotated[
        list[Wish] | None, Query(max_length=10, description="wishes, comma-separated")
    ] = None,
) -> Response[SuggestResponse]:
    context = customer_context(
        country=country,
        language=",".join(language) if language else None,
        keyboard=keyboard,
        profession=profession,
        preferences=",".join(preferences) if preferences else None,
        headers=app.current_event.headers,
    )
    body = SuggestResponse.of(catalog.suggest(context), context, public_base_url(app))
    return Response(
        status_code=200,
        content_type=content_types.APPLICATION_JSON,
        body=body,
        # The answer depends on these headers when the query does not say otherwise.
        headers={"Cache-Control": "public, max-age=60", "Vary": "Accept-Language, CloudFront-Viewer-Country"},
    )


lambda_handler = http_handler(app)
