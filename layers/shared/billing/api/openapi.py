"""OpenAPI pieces: problem responses for route declarations, and the committed document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

from billing.api.problems import PROBLEM_CONTENT_TYPE, Problem

#: Generated from every function's routes by ``make openapi``; CI fails when it drifts.
OPENAPI_DOCUMENT_PATH = Path(__file__).with_name("openapi.json")

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing or wrong API key (the same answer for an unknown purchase)",
    402: "Insufficient funds or unpaid checkout",
    404: "Not found",
    409: "Conflict (idempotency key reused, or wrong state)",
    413: "Body too large (over MAX_BODY_BYTES, 64 KiB)",
    415: "Body not declared as JSON",
    422: "Validation failed",
    500: "Unexpected error (quote X-Request-Id)",
    501: "Not built yet on this server",
    503: "A dependency is unavailable; nothing was written",
}


#: Every route can answer these: the body checks (size, media type) and validation run on every route;
#: bugs happen.
_ALWAYS = (413, 415, 422, 500)

#: For routes that need a customer or vendor key.
BEARER_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def problem_responses(*statuses: int, success: int | None = 200) -> dict[int, OpenAPIResponse]:
    """A route's documented responses: ``success`` (its schema comes from the return type)
    plus problem+json for ``statuses`` and for 413, 415, 422 and 500, which every route can answer.
    """
    responses: dict[int, OpenAPIResponse] = {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_CONTENT_TYPE: {"model": Problem}},
        }
        for status in sorted(set(statuses) | set(_ALWAYS))
    }
    if success is not None:
        responses[success] = {"description": "Success"}
    return responses


def load_openapi_document() -> dict[str, Any]:
    return dict(json.loads(OPENAPI_DOCUMENT_PATH.read_text()))
