"""Every fixture runs through its real handler, and template.yaml agrees with the function code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

from local.handlers import LocalLambdaContext, load_handler, load_module
from local.template import LambdaFunction, load_template
from tests.conftest import EVENTS_DIR, REPO_ROOT, load_event

TEMPLATE = load_template()
FIXTURES = sorted(path.stem for path in EVENTS_DIR.glob("*.json"))
HTTP_FUNCTIONS = [function for function in TEMPLATE.functions if function.routes]
OTHER_FUNCTIONS = [function for function in TEMPLATE.functions if not function.routes]


def _owner(fixture: str) -> LambdaFunction:
    """The function a fixture is for, by the ``<folder>_<case>`` naming rule (longest folder wins)."""
    folders = [function for function in TEMPLATE.functions if fixture.startswith(f"{function.folder}_")]
    assert folders, f"events/{fixture}.json names no function folder"
    return max(folders, key=lambda function: len(function.folder))


HTTP_FIXTURES = [name for name in FIXTURES if _owner(name).routes]
OTHER_FIXTURES = [name for name in FIXTURES if not _owner(name).routes]


def _invoke(function: LambdaFunction, event: dict[str, Any]) -> Any:
    return load_handler(function)(event, LocalLambdaContext.for_function(function))


@pytest.mark.parametrize("fixture", HTTP_FIXTURES)
def test_http_fixture_is_answered_without_a_server_error(fixture: str, handler_env: None) -> None:
    function = _owner(fixture)
    event = load_event(fixture)
    assert event["routeKey"] in {route.route_key for route in function.routes}, "fixture routed elsewhere"

    response = _invoke(function, event)

    assert response["statusCode"] < 500 or response["statusCode"] == 501, response
    if response["statusCode"] >= 400:
        assert response["headers"]["Content-Type"] == "application/problem+json"
        problem = json.loads(response["body"])
        assert problem["status"] == response["statusCode"]
        assert {"type", "title", "detail"} <= problem.keys()


@pytest.mark.parametrize("fixture", OTHER_FIXTURES)
def test_other_fixture_runs(fixture: str, handler_env: None) -> None:
    result = _invoke(_owner(fixture), load_event(fixture))

    assert isinstance(result, dict)


def test_every_function_has_a_fixture() -> None:
    covered = {_owner(fixture).folder for fixture in FIXTURES}

    assert covered == {function.folder for function in TEMPLATE.functions}


def _registered_routes(app: APIGatewayHttpResolver) -> set[tuple[str, str]]:
    """(method, path) as registered in the resolver, written the template's way (``{param}``)."""
    routes = app._static_routes + app._dynamic_routes
    return {(route.method.upper(), re.sub(r"<(\w+)>", r"{\1}", route.path)) for route in routes}


@pytest.mark.parametrize("function", HTTP_FUNCTIONS, ids=lambda function: function.folder)
def test_resolver_registers_exactly_the_template_routes(function: LambdaFunction) -> None:
    app = load_module(function).app
    assert isinstance(app, APIGatewayHttpResolver)

    assert _registered_routes(app) == {(route.method, route.path) for route in function.routes}


def test_every_function_folder_is_in_the_template() -> None:
    folders = {path.parent for path in (REPO_ROOT / "functions").glob("*/app.py")}

    assert folders == {function.code_dir for function in TEMPLATE.functions}
    assert all(Path(function.code_dir, "app.py").is_file() for function in TEMPLATE.functions)
