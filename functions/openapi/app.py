"""GET /openapi.json — the committed OpenAPI document of every route."""

from typing import Any

from billing.api.http import build_app, http_handler
from billing.api.openapi import load_openapi_document

app = build_app()
_document = load_openapi_document()


@app.get("/openapi.json", cache_control="public, max-age=300")
def get_openapi_document() -> dict[str, Any]:
    return _document


lambda_handler = http_handler(app)
