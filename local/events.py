"""API Gateway HTTP API (payload format 2.0) as the local runner needs it.

Route matching follows API Gateway: ``{param}`` matches one segment,
``{proxy+}`` the rest of the path, and the most specific route wins (literal
segments over parameters over greedy, then a named method over ``ANY``). A path
that matches no route for the request's method is a 404, as on HTTP APIs.

``python -m local.events [--check]`` (re)writes the ``events/*.json`` fixtures
with this same builder, so every fixture is an event API Gateway could send.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import json
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus, unquote

from local.template import REPO_ROOT, Route, http_routes, load_template

EVENTS_DIR = REPO_ROOT / "events"
ACCOUNT_ID = "123456789012"

_LITERAL, _PARAMETER, _GREEDY = 0, 1, 2


@dataclass(frozen=True)
class HttpRequest:
    """A request as it reached the server: nothing decoded or normalised yet."""

    method: str
    raw_path: str
    raw_query_string: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    protocol: str = "HTTP/1.1"


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    path_parameters: Mapping[str, str]


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _segments(path: str) -> list[str]:
    return path.removeprefix("/").split("/")


def _segment_kind(segment: str) -> int:
    if segment.startswith("{") and segment.endswith("+}"):
        return _GREEDY
    if segment.startswith("{") and segment.endswith("}"):
        return _PARAMETER
    return _LITERAL


def _match_path(template_path: str, raw_path: str) -> dict[str, str] | None:
    """Path parameters (URL-decoded) if ``raw_path`` fits ``template_path``, else ``None``."""
    wanted, given = _segments(template_path), _segments(raw_path)
    parameters: dict[str, str] = {}
    for index, segment in enumerate(wanted):
        kind = _segment_kind(segment)
        if kind == _GREEDY:
            rest = given[index:]
            if not rest or not rest[0]:
                return None
            parameters[segment[1:-2]] = unquote("/".join(rest))
            return parameters
        if index >= len(given):
            return None
        value = unquote(given[index])
        if kind == _PARAMETER:
            if not value:
                return None
            parameters[segment[1:-1]] = value
        elif value != segment:
            return None
    return parameters if len(given) == len(wanted) else None


def _specificity(route: Route) -> tuple[tuple[int, ...], int]:
    """Smaller is more specific."""
    return tuple(_segment_kind(segment) for segment in _segments(route.path)), int(route.method == "ANY")


def match_route(routes: Iterable[Route], method: str, raw_path: str) -> RouteMatch | None:
    candidates = []
    for route in routes:
        if route.method not in (method.upper(), "ANY"):
            continue
        parameters = _match_path(route.path, raw_path)
        if parameters is not None:
            candidates.append(RouteMatch(route, parameters))
    return min(candidates, key=lambda match: _specificity(match.route), default=None)


def _joined_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def _query_parameters(raw_query_string: str) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(raw_query_string, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    return parameters


def _request_time(at: datetime) -> str:
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    utc = at.astimezone(UTC)
    return f"{utc:%d}/{months[utc.month - 1]}/{utc:%Y:%H:%M:%S} +0000"


def build_event(
    request: HttpRequest,
    match: RouteMatch,
    *,
    request_id: str | None = None,
    at: datetime | None = None,
    api_id: str = "local",
) -> dict[str, Any]:
    """The payload 2.0 event API Gateway would hand the route's function."""
    at = at or datetime.now(UTC)
    headers = _joined_headers(request.headers)
    cookie_header = headers.pop("cookie", "")
    cookies = [cookie.strip() for cookie in cookie_header.split(";") if cookie.strip()]
    route_key = match.route.route_key
    domain_name = headers.get("host", "localhost")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.raw_path,
        "rawQueryString": request.raw_query_string,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if query := _query_parameters(request.raw_query_string):
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": api_id,
        "domainName": domain_name,
        "domainPrefix": domain_name.split(":")[0].split(".")[0],
        "http": {
            "method": request.method.upper(),
            "path": request.raw_path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id or str(uuid.uuid4()),
        "routeKey": route_key,
        "stage": "$default",
        "time": _request_time(at),
        "timeEpoch": int(at.timestamp() * 1000),
    }
    if match.path_parameters:
        event["pathParameters"] = dict(match.path_parameters)
    event["isBase64Encoded"] = False
    if request.body:
        try:
            event["body"] = request.body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"] = base64.b64encode(request.body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


def http_response(result: Any) -> HttpResponse:
    """API Gateway's reading of a payload 2.0 handler result.

    A dict without ``statusCode`` is, as on API Gateway, a 200 JSON body.
    """
    if not isinstance(result, dict) or "statusCode" not in result:
        return HttpResponse(200, [("Content-Type", "application/json")], json.dumps(result).encode())
    headers = [(name, str(value)) for name, value in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((name, str(value)) for value in values)
    headers.extend(("Set-Cookie", cookie) for cookie in result.get("cookies") or [])
    body = str(result.get("body") or "")
    payload = base64.b64decode(body, validate=True) if result.get("isBase64Encoded") else body.encode()
    return HttpResponse(int(result["statusCode"]), headers, payload)


# ------------------------------------------------------------------ fixtures

DEMO_PURCHASE_ID = "00000000-0000-4000-8000-000000000001"
DEMO_OFFER_ID = "gemini-api-key"
DEMO_LIST_ID = "developer-cloud"
DEMO_WALLET_ID = "6f1d2c3b-0000-4000-8000-0000000000aa"
_FIXTURE_TIME = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
_FIXTURE_API_ID = "a1b2c3d4e5"
_FIXTURE_HOST = f"{_FIXTURE_API_ID}.execute-api.us-east-1.amazonaws.com"
_FIXTURE_NAMESPACE = uuid.UUID("0d1f3b2e-5c55-4e8a-9a51-6f1e0c0b7a10")
COST_REPORT_BUCKET = "officex-cost-reports"
LEGACY_MANIFEST_KEY = (
    "cur/officex-cur/20231101-20231201/7f0c1a7e-0000-4000-8000-000000000000/officex-cur-Manifest.json"
)
#: Data Exports (CUR 2.0 / FOCUS): the manifest under metadata/ ("=" arrives URL-encoded).
DATA_EXPORTS_MANIFEST_KEY = "exports/officex-cur2/metadata/BILLING_PERIOD=2023-11/officex-cur2-Manifest.json"
#: Objects the cost_export function must ignore: a data file, and a manifest for Redshift (also
#: ending in "Manifest.json", so the S3 notification filter lets it through).
LEGACY_DATA_FILE_KEY = (
    "cur/officex-cur/20231101-20231201/7f0c1a7e-0000-4000-8000-000000000000/officex-cur-1.csv.gz"
)
REDSHIFT_MANIFEST_KEY = (
    "cur/officex-cur/20231101-20231201/7f0c1a7e-0000-4000-8000-000000000000/officex-cur-RedshiftManifest.json"
)


@dataclass(frozen=True)
class HttpFixture:
    name: str
    method: str
    path: str
    query: str = ""
    key: str | None = None
    body: dict[str, Any] | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()


HTTP_FIXTURES = (
    HttpFixture("health_get", "GET", "/health"),
    HttpFixture("openapi_get", "GET", "/openapi.json"),
    HttpFixture(
        "appstore_suggest_context",
        "GET",
        "/appstore/suggest",
        query="country=DE&language=de&profession=developer&preferences=ai&preferences=privacy",
        extra_headers=(("CloudFront-Viewer-Country", "DE"), ("Accept-Language", "de-DE,de;q=0.9,en;q=0.8")),
    ),
    HttpFixture("appstore_suggest_no_context", "GET", "/appstore/suggest"),
    HttpFixture("appstore_list_get", "GET", f"/appstore/list/{DEMO_LIST_ID}"),
    HttpFixture("appstore_list_unknown", "GET", "/appstore/list/no-such-list"),
    HttpFixture("offer_get_demo", "GET", f"/offer/{DEMO_OFFER_ID}"),
    HttpFixture("offer_get_unknown", "GET", "/offer/no-such-offer"),
    HttpFixture(
        "checkout_wallet_create_devchain_usdc",
        "POST",
        f"/offer/{DEMO_OFFER_ID}/checkout/wallet/create",
        body={
            "chain": "devchain",
            "token": "USDC",
            "min_target_balance": "25.000000000",
            "email": "dev@example.com",
        },
    ),
    HttpFixture(
        "checkout_wallet_verify_pending",
        "POST",
        f"/offer/{DEMO_OFFER_ID}/checkout/wallet/{DEMO_WALLET_ID}/verify",
    ),
    HttpFixture(
        "checkout_finalize_paid",
        "POST",
        f"/offer/{DEMO_OFFER_ID}/checkout/finalize",
        body={
            "wallet_id": DEMO_WALLET_ID,
            "officex_purchase_id": "PurchaseID_demo",
            "customer_org_id": "DriveID_demo",
            "customer_user_id": "UserID_demo",
        },
        extra_headers=(("Idempotency-Key", "finalize-demo-1"),),
    ),
    HttpFixture("purchase_get_demo", "GET", f"/purchase/{DEMO_PURCHASE_ID}", key="ck_demo"),
    HttpFixture("purchase_get_no_auth", "GET", f"/purchase/{DEMO_PURCHASE_ID}"),
    HttpFixture(
        "meter_usage_single",
        "POST",
        f"/purchase/{DEMO_PURCHASE_ID}/meter-usage",
        key="vk_demo",
        body={
            "idempotency_key": "evt-1",
            "usage_amount": "1200",
            "unit": "tokens",
            "cost_incurred": "0.012000000",
        },
    ),
    HttpFixture(
        "purchase_authorize_hold",
        "POST",
        f"/purchase/{DEMO_PURCHASE_ID}/authorize",
        key="vk_demo",
        body={"idempotency_key": "hold-1", "amount": "0.050000000", "ttl_seconds": 300},
    ),
    HttpFixture("verify_topup_demo", "POST", f"/purchase/{DEMO_PURCHASE_ID}/verify-topup", key="ck_demo"),
    HttpFixture(
        "historical_billing_daily",
        "POST",
        f"/purchase/{DEMO_PURCHASE_ID}/historical-billing",
        key="ck_demo",
        body={"interval": "day", "group_by": "meter", "format": "json"},
    ),
    HttpFixture(
        "historical_billing_monthly_csv",
        "POST",
        f"/purchase/{DEMO_PURCHASE_ID}/historical-billing",
        key="ck_demo",
        body={
            "interval": "month",
            "start": "2024-10-01T00:00:00Z",
            "end": "2025-01-15T12:00:00Z",
            "format": "csv",
        },
    ),
)


def _http_fixture_event(fixture: HttpFixture, routes: list[Route]) -> dict[str, Any]:
    body = json.dumps(fixture.body).encode() if fixture.body is not None else b""
    headers = [("Host", _FIXTURE_HOST), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*")]
    if body:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if fixture.key is not None:
        headers.append(("Authorization", f"Bearer {fixture.key}"))
    headers += [*fixture.extra_headers, ("X-Forwarded-For", "203.0.113.10"), ("X-Forwarded-Proto", "https")]
    request = HttpRequest(
        fixture.method, fixture.path, fixture.query, headers, body, source_ip="203.0.113.10"
    )
    match = match_route(routes, fixture.method, fixture.path)
    if match is None:
        raise LookupError(f"fixture {fixture.name}: no template route for {fixture.method} {fixture.path}")
    request_id = str(uuid.uuid5(_FIXTURE_NAMESPACE, fixture.name))
    return build_event(request, match, request_id=request_id, at=_FIXTURE_TIME, api_id=_FIXTURE_API_ID)


def s3_object_created_event(bucket: str, key: str, size: int = 1024) -> dict[str, Any]:
    """The shape ``sam local generate-event s3 put`` produces; keys URL-encoded as S3 sends them."""
    return {
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "1970-01-01T00:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "EXAMPLE"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {
                    "x-amz-request-id": "EXAMPLE123456789",
                    "x-amz-id-2": "EXAMPLE123/5678abcdefghijklambdaisawesome/mnopqrstuvwxyzABCDEFGH",
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "testConfigRule",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "EXAMPLE"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": "0123456789abcdef0123456789abcdef",
                        "sequencer": "0A1B2C3D4E5F678901",
                    },
                },
            }
        ]
    }


def fixture_events(template_path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every fixture by file stem."""
    template = load_template(template_path) if template_path else load_template()
    routes = http_routes(template)
    fixtures = {fixture.name: _http_fixture_event(fixture, routes) for fixture in HTTP_FIXTURES}
    fixtures["sweep_holds_and_balances"] = {"job": "holds_and_balances"}
    fixtures["sweep_maintenance"] = {"job": "maintenance"}
    fixtures["migrate_run"] = {}
    fixtures["outbox_dispatch_scheduled"] = {}  # the schedule's Input: every channel
    fixtures["provisioner_scheduled"] = {}  # the schedule's Input: every due resource action
    fixtures["provisioner_purchase"] = {"purchase_id": DEMO_PURCHASE_ID}  # finalize's async invoke
    fixtures["usage_estimator_scheduled"] = {}  # the schedule's Input: every provisioned bucket
    fixtures["cost_export_legacy_manifest"] = s3_object_created_event(COST_REPORT_BUCKET, LEGACY_MANIFEST_KEY)
    fixtures["cost_export_data_exports_manifest"] = s3_object_created_event(
        COST_REPORT_BUCKET, DATA_EXPORTS_MANIFEST_KEY
    )
    fixtures["cost_export_data_file_ignored"] = s3_object_created_event(
        COST_REPORT_BUCKET, LEGACY_DATA_FILE_KEY, size=48_213
    )
    fixtures["cost_export_redshift_manifest_ignored"] = s3_object_created_event(
        COST_REPORT_BUCKET, REDSHIFT_MANIFEST_KEY
    )
    return fixtures


def _render(event: Mapping[str, Any]) -> str:
    return json.dumps(event, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.events", description="Write the events/*.json fixtures."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a fixture differs from what is generated"
    )
    parser.add_argument("--out", type=Path, default=EVENTS_DIR, help="fixtures folder (default: events/)")
    arguments = parser.parse_args(argv)
    stale = []
    for name, event in sorted(fixture_events().items()):
        path = arguments.out / f"{name}.json"
        wanted = _render(event)
        current = path.read_text() if path.exists() else ""
        if current == wanted:
            continue
        if arguments.check:
            stale.append(path.name)
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(True), wanted.splitlines(True), str(path), "generated", n=1
                )
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted)
            print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    if stale:
        print(f"stale fixtures: {', '.join(stale)}; run python -m local.events", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
