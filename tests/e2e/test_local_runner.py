"""The local runner over real HTTP: every template route, API Gateway's own answers, the CLI."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from billing.api.openapi import OPENAPI_DOCUMENT_PATH
from billing.domain.money import format_usd
from local.events import DEMO_OFFER_ID, HTTP_FIXTURES, HttpFixture
from local.postgres import throwaway_cluster
from local.runner import MAX_API_PAYLOAD_BYTES
from local.template import Route, http_routes, load_template
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Answer, Local

ROUTES = http_routes(load_template())
#: Routes whose issue has not landed: they must answer a proper 501. Remove a folder when it does.
NOT_BUILT_YET: set[str] = set()


def _assert_problem(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, answer
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == status
    assert all(isinstance(problem[field], str) and problem[field] for field in ("type", "title", "detail"))
    return problem


def _fixture_for(route: Route) -> HttpFixture:
    """The first fixture of the route: a sensible path, body and key for it."""
    folder = load_template().function(route.function_id).folder
    return next(fixture for fixture in HTTP_FIXTURES if fixture.name.startswith(f"{folder}_"))


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.route_key)
def test_every_template_route_answers(local: Local, route: Route) -> None:
    fixture = _fixture_for(route)
    body = json.dumps(fixture.body).encode() if fixture.body is not None else None
    query = f"?{fixture.query}" if fixture.query else ""

    answer = local.request(fixture.method, fixture.path + query, key=local.real_key(fixture.key), body=body)

    assert answer.body != b'{"message":"Not Found"}', "the runner did not route it"
    folder = load_template().function(route.function_id).folder
    if folder in NOT_BUILT_YET:
        _assert_problem(answer, 501)
    else:
        assert answer.status < 500, answer
    assert "X-Request-Id" in answer.headers


def test_health(local: Local) -> None:
    answer = local.request("GET", "/health")

    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["status"] == "ok"


def test_openapi_is_the_committed_document(local: Local) -> None:
    answer = local.request("GET", "/openapi.json")

    assert answer.status == 200
    assert answer.json() == json.loads(OPENAPI_DOCUMENT_PATH.read_text())


def test_seeded_purchase_is_readable_with_its_customer_key(local: Local, database_url: str) -> None:
    answer = local.request("GET", f"/purchase/{local.seed.purchase_id}", key=local.seed.customer_key)

    assert answer.status == 200, answer
    purchase = answer.json()
    assert purchase["purchase_id"] == local.seed.purchase_id
    assert purchase["offer_id"] == DEMO_OFFER_ID
    assert purchase["status"] == "active"
    # 25 USD opening credit, less whatever other tests metered: the ledger says how much.
    with psycopg.connect(database_url) as connection:
        opening, total = connection.execute(
            """SELECT sum(amount_nano) FILTER (WHERE idempotency_key = 'demo-opening-credit'),
                      sum(amount_nano)
                 FROM ledger_entries WHERE purchase_id = %s""",
            (local.seed.purchase_id,),
        ).fetchone() or (None, None)
    assert opening == 25 * 10**9
    assert purchase["balance"] == format_usd(int(total))


def test_unknown_purchase_and_wrong_key_get_the_same_401(local: Local) -> None:
    wrong_key = local.request("GET", f"/purchase/{local.seed.purchase_id}", key=local.seed.vendor_key)
    unknown = local.request(
        "GET", "/purchase/00000000-0000-4000-8000-00000000ffff", key=local.seed.customer_key
    )
    malformed = local.request("GET", "/purchase/not-a-uuid", key=local.seed.customer_key)

    problem = _assert_problem(wrong_key, 401)
    assert _assert_problem(unknown, 401) == problem
    assert _assert_problem(malformed, 401) == problem
    assert wrong_key.headers["WWW-Authenticate"].startswith("Bearer")


def test_key_in_the_query_string_is_refused(local: Local) -> None:
    path = f"/purchase/{local.seed.purchase_id}?api_key={local.seed.customer_key}"

    _assert_problem(local.request("GET", path, key=local.seed.customer_key), 400)


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/health"), ("GET", "/purchase")])
def test_unrouted_requests_get_api_gateways_404(local: Local, method: str, path: str) -> None:
    answer = local.request(method, path, body=b"{}" if method == "POST" else None)

    assert answer.status == 404
    assert answer.body == b'{"message":"Not Found"}'
    assert "X-Request-Id" not in answer.headers  # no function was involved


def test_body_over_the_function_limit_gets_413_problem(local: Local) -> None:
    body = json.dumps({"padding": "x" * 70_000}).encode()
    path = f"/purchase/{local.seed.purchase_id}/meter-usage"

    _assert_problem(local.request("POST", path, key=local.seed.vendor_key, body=body), 413)


def test_body_over_the_api_gateway_limit_is_refused_before_it_is_read(local: Local) -> None:
    address = urlsplit(local.server.base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    connection.putrequest("POST", f"/purchase/{local.seed.purchase_id}/meter-usage")
    connection.putheader("Content-Length", str(MAX_API_PAYLOAD_BYTES + 1))
    connection.endheaders()
    response = connection.getresponse()

    assert response.status == 413
    assert json.loads(response.read()) == {"message": "Request Entity Too Large"}
    connection.close()


def test_each_request_is_logged_once(local: Local) -> None:
    local.request("GET", "/health?probe=1")

    lines = [line for line in local.log.getvalue().splitlines() if line.startswith("GET /health ")]
    assert lines
    assert re.fullmatch(r"GET /health 200 \d+\.\dms", lines[-1])


@pytest.mark.slow
def test_throwaway_cluster_answers_and_is_gone_afterwards() -> None:
    with throwaway_cluster() as url, psycopg.connect(url, autocommit=True) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


@pytest.mark.slow
def test_cli_serves_on_a_throwaway_cluster_and_stops_it_on_sigterm() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "layers" / "shared"), str(REPO_ROOT)])
    runner = subprocess.Popen(
        [sys.executable, "-m", "local.runner", "--port", "0", "--no-seed"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        banner = runner.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+) .*Postgres 127\.0\.0\.1:(\d+)/", banner)
        assert found, banner + (runner.stderr.read() if runner.poll() is not None and runner.stderr else "")
        base_url, database_port = found.group(1), found.group(2)
        with urllib.request.urlopen(f"{base_url}/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
    finally:
        runner.send_signal(signal.SIGTERM)
        _, errors = runner.communicate(timeout=60)

    assert runner.returncode == 0, errors
    assert "GET /health 200" in errors
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{database_port}/postgres", connect_timeout=2)
