"""GET /openapi.json — the committed OpenAPI document of every route."""

from functools import cache
from typing import Any

from billing.api.http import build_app, http_handler
from billing.api.openapi import load_openapi_document

app = build_app()


@cache
def _document() -> dict[str, Any]:
    return load_openapi_document()


@app.get("/openapi.json", cache_control="public, max-age=300", operation_id="getOpenApiDocument")
def get_openapi_document() -> dict[str, Any]:
    return _document()


lambda_handler = http_handler(app)
