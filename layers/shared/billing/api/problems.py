"""RFC 9457 problem+json: every error becomes one of these, mapped here and only here."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict

from billing.api.observability import logger
from billing.domain.errors import (
    BillingError,
    DependencyUnavailable,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidRequest,
    NotFound,
    NotImplementedYet,
    PayloadTooLarge,
    StateConflict,
    Unauthorized,
)

PROBLEM_CONTENT_TYPE = "application/problem+json"

STATUS_BY_ERROR: dict[type[BillingError], HTTPStatus] = {
    InvalidRequest: HTTPStatus.BAD_REQUEST,
    Unauthorized: HTTPStatus.UNAUTHORIZED,
    InsufficientFunds: HTTPStatus.PAYMENT_REQUIRED,
    NotFound: HTTPStatus.NOT_FOUND,
    IdempotencyConflict: HTTPStatus.CONFLICT,
    StateConflict: HTTPStatus.CONFLICT,
    PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    InvalidAmount: HTTPStatus.UNPROCESSABLE_ENTITY,
    NotImplementedYet: HTTPStatus.NOT_IMPLEMENTED,
}


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[ValidationIssue] | None = None


def _slug(title: str) -> str:
    return "/problems/" + title.lower().replace(" ", "-")


def problem_body(status: HTTPStatus, title: str, detail: str, extra: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"type": _slug(title), "title": title, "status": int(status), "detail": detail}
    body.update(extra or {})
    return json.dumps(body, default=str)


def problem_response(
    status: HTTPStatus, title: str, detail: str, *, extra: dict[str, Any] | None = None
) -> Response[str]:
    headers = {"WWW-Authenticate": 'Bearer realm="purchase"'} if status == HTTPStatus.UNAUTHORIZED else None
    return Response(
        status_code=int(status),
        content_type=PROBLEM_CONTENT_TYPE,
        body=problem_body(status, title, detail, extra),
        headers=headers,
    )


def billing_error_response(error: BillingError) -> Response[str]:
    status = next(
        (code for cls, code in STATUS_BY_ERROR.items() if isinstance(error, cls)),
        HTTPStatus.BAD_REQUEST,
    )
    if status >= 500:
        logger.warning("request refused", extra={"problem": error.title, "detail": error.detail})
    else:
        logger.info("request refused", extra={"problem": error.title, "detail": error.detail})
    return problem_response(status, error.title, error.detail, extra=error.extra)


def validation_problem(error: RequestValidationError) -> Response[str]:
    """422 listing where and why; the offending input is never echoed (it may be a secret)."""
    issues = [
        {
            "loc": [str(part) if not isinstance(part, int) else part for part in item["loc"]],
            "msg": _without_input(item.get("msg", "invalid")),
            "type": item.get("type", "invalid"),
        }
        for item in error.errors()
    ]
    logger.info("request refused", extra={"problem": "validation", "errors": issues})
    return problem_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "Validation failed",
        "the request does not match the API contract",
        extra={"errors": issues},
    )


def _without_input(message: str) -> str:
    # pydantic's "Value error, <detail>" prefix carries our own detail text; keep it readable.
    return message.removeprefix("Value error, ")


def _dependency_problem(error: DependencyUnavailable) -> Response[str]:
    logger.warning("dependency unavailable", extra={"detail": error.detail})
    return problem_response(HTTPStatus.SERVICE_UNAVAILABLE, error.title, error.detail)


def _no_route_problem(_: NotFoundError) -> Response[str]:
    return problem_response(HTTPStatus.NOT_FOUND, "Not found", "no such route")


def _unexpected_problem(_: Exception) -> Response[str]:
    logger.exception("unexpected error")
    return problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "Internal error",
        "an unexpected error occurred; quote the x-request-id header when reporting it",
    )


def register_problem_handlers(app: APIGatewayHttpResolver) -> None:
    """Attach the mapping to a Powertools resolver."""
    app.exception_handler(BillingError)(billing_error_response)
    app.exception_handler(RequestValidationError)(validation_problem)
    app.exception_handler(NotFoundError)(_no_route_problem)
    app.exception_handler(DependencyUnavailable)(_dependency_problem)
    app.exception_handler(Exception)(_unexpected_problem)
