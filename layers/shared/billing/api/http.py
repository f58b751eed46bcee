"""The one handler shape every HTTP function uses.

``functions/<route>/app.py`` builds its resolver with :func:`build_app`,
registers its single route, and exposes ``lambda_handler = http_handler(app)``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.api.observability import logger, metrics, tracer
from billing.api.problems import PROBLEM_CONTENT_TYPE, problem_body, register_problem_handlers
from billing.domain.errors import SAME_FOR_EVERY_AUTH_FAILURE, InvalidRequest, NotImplementedYet, Unauthorized
from billing.settings import get_api_settings

LambdaHandler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]

#: Query parameters that look like credentials; keys travel only in the Authorization header.
_CREDENTIAL_QUERY_NAMES = frozenset({"key", "api_key", "apikey", "token", "access_token", "authorization"})


def build_app() -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver(enable_validation=True)
    register_problem_handlers(app)
    return app


def _body_size(event: dict[str, Any]) -> int:
    body = event.get("body") or ""
    size = len(body.encode()) if isinstance(body, str) else len(body)
    return size * 3 // 4 if event.get("isBase64Encoded") else size


def _refusal(
    status: HTTPStatus, title: str, detail: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A problem answered before the resolver runs (the body is never parsed)."""
    logger.info("request refused", extra={"problem": title, "detail": detail})
    return {
        "statusCode": int(status),
        "headers": {"Content-Type": PROBLEM_CONTENT_TYPE},
        "body": problem_body(status, title, detail, extra),
        "isBase64Encoded": False,
    }


def _unreadable_body(event: dict[str, Any]) -> dict[str, Any] | None:
    """Why the body cannot be a request body of this API, checked before the resolver sees it.

    JSON is UTF-8 (RFC 8259): API Gateway base64-encodes other bytes, and Powertools fails on them.
    Every body of this API is a JSON object: Powertools would take the first item of an array for the
    body model (it unwraps lists, as for repeated query parameters), so ``[{…}, …]`` must be refused here.
    Malformed JSON is left to the resolver (422 json_invalid), except nesting too deep to parse.
    """
    body = event.get("body")
    if not body:
        return None
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return {"loc": ["body"], "msg": "JSON must be UTF-8", "type": "json_invalid"}
    try:
        document = json.loads(body)
    except ValueError:
        return None
    except RecursionError:  # e.g. 20,000 nested brackets: Powertools would fail on them with a 500
        return {"loc": ["body"], "msg": "the body nests too deeply", "type": "json_invalid"}
    if not isinstance(document, dict):
        return {"loc": ["body"], "msg": "the body must be a JSON object", "type": "model_attributes_type"}
    return None


def _not_json(event: dict[str, Any]) -> bool:
    """A body that is not declared as JSON (e.g. curl -d's form encoding) would be misread."""
    if not event.get("body"):
        return False
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    media_type = str(headers.get("content-type", "")).split(";")[0].strip().lower()
    return media_type != "application/json" and not media_type.endswith("+json")


def http_handler(app: APIGatewayHttpResolver) -> LambdaHandler:
    """Wrap ``app`` with logging (correlation id = API request id), tracing, metrics, body limit."""
    limit = get_api_settings().max_body_bytes

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        if _body_size(event) > limit:
            response = _refusal(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "Payload too large",
                f"request body exceeds {limit} bytes",
            )
        elif _not_json(event):
            response = _refusal(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "send the body as JSON with 'Content-Type: application/json'",
            )
        elif (issue := _unreadable_body(event)) is not None:
            response = _refusal(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "Validation failed",
                "the request does not match the API contract",
                {"errors": [issue]},
            )
        else:
            response = app.resolve(event, context)
        status_class = int(response.get("statusCode", 500)) // 100
        metrics.add_metric(name=f"Responses{status_class}xx", unit=MetricUnit.Count, value=1)
        request_id = (event.get("requestContext") or {}).get("requestId")
        if request_id:
            response.setdefault("headers", {})["X-Request-Id"] = request_id
        return response

    return cast(LambdaHandler, lambda_handler)


def bearer_key(app: APIGatewayHttpResolver) -> str:
    """The API key from ``Authorization: Bearer``; keys in the query string are refused."""
    event = app.current_event
    query = event.query_string_parameters or {}
    if _CREDENTIAL_QUERY_NAMES.intersection(name.lower() for name in query):
        raise InvalidRequest("API keys are accepted only in the Authorization header, never in the URL")
    header = event.headers.get("authorization") or ""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or len(key) > 512:
        raise Unauthorized(SAME_FOR_EVERY_AUTH_FAILURE)
    return key.strip()


def public_base_url(app: APIGatewayHttpResolver) -> str:
    """Links point at ``PUBLIC_BASE_URL`` (custom domain) or at the host the request came to."""
    configured = get_api_settings().public_base_url
    if configured:
        return configured.rstrip("/")
    return f"https://{app.current_event.request_context.domain_name}"


def not_built(feature: str) -> None:
    """Answer 501 for a route of the contract whose issue has not landed yet."""
    raise NotImplementedYet(f"{feature} is not available yet on this server")
