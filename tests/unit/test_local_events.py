"""The local runner's API Gateway emulation: route matching, events, responses, template reading."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from local.events import (
    HttpRequest,
    RouteMatch,
    build_event,
    fixture_events,
    http_response,
    main,
    match_route,
)
from local.openapi_export import OpenApiMergeError, merge_documents
from local.template import CloudFormationLoader, Route, TemplateError, http_routes, load_template

ROUTES = [
    Route("GET", "/items/{item_id}", "Item"),
    Route("GET", "/items/special", "Special"),
    Route("ANY", "/items/special", "AnySpecial"),
    Route("GET", "/items/{item_id}/parts/{part_id}", "Part"),
    Route("GET", "/files/{proxy+}", "Files"),
    Route("GET", "/files/{name}", "File"),
]


def _match(method: str, path: str) -> RouteMatch:
    match = match_route(ROUTES, method, path)
    assert match is not None, f"{method} {path} matched nothing"
    return match


def test_parameters_are_extracted_and_url_decoded() -> None:
    match = _match("GET", "/items/a%20b/parts/7")

    assert match.route.function_id == "Part"
    assert match.path_parameters == {"item_id": "a b", "part_id": "7"}


def test_literal_segment_beats_parameter_and_named_method_beats_any() -> None:
    assert _match("GET", "/items/special").route.function_id == "Special"
    assert _match("POST", "/items/special").route.function_id == "AnySpecial"
    assert _match("GET", "/items/other").route.function_id == "Item"


def test_parameter_beats_greedy_which_takes_the_rest_of_the_path() -> None:
    assert _match("GET", "/files/readme").route.function_id == "File"
    greedy = _match("GET", "/files/docs/a/b.txt")
    assert greedy.route.function_id == "Files"
    assert greedy.path_parameters == {"proxy": "docs/a/b.txt"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/items/7"),  # known path, no route for the method: 404 on HTTP APIs
        ("GET", "/items"),
        ("GET", "/items/7/parts"),
        ("GET", "/items/7/"),
        ("GET", "/items//parts/1"),
        ("GET", "/nothing"),
        ("GET", "/files/"),
    ],
)
def test_no_match(method: str, path: str) -> None:
    assert match_route(ROUTES, method, path) is None


def test_template_routes_match_their_own_paths() -> None:
    routes = http_routes(load_template())
    match = match_route(routes, "POST", "/offer/demo-gemini/checkout/wallet/w-1/verify")

    assert match is not None
    assert match.route.route_key == "POST /offer/{offer_id}/checkout/wallet/{wallet_id}/verify"
    assert match.path_parameters == {"offer_id": "demo-gemini", "wallet_id": "w-1"}
    assert match_route(routes, "GET", "/offer/demo-gemini/checkout/finalize") is None


def test_event_has_the_payload_2_shape() -> None:
    request = HttpRequest(
        method="get",
        raw_path="/items/a%20b/parts/7",
        raw_query_string="tag=a&tag=b&q=x%20y&flag",
        headers=[
            ("Host", "127.0.0.1:3000"),
            ("User-Agent", "curl/8"),
            ("X-Multi", "one"),
            ("x-multi", "two"),
            ("Cookie", "a=1; b=2"),
        ],
        body=b'{"n": 1}',
        source_ip="127.0.0.9",
    )
    event = build_event(request, _match("GET", request.raw_path), request_id="req-1")

    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /items/{item_id}/parts/{part_id}"
    assert event["rawPath"] == "/items/a%20b/parts/7"
    assert event["rawQueryString"] == "tag=a&tag=b&q=x%20y&flag"
    assert event["queryStringParameters"] == {"tag": "a,b", "q": "x y", "flag": ""}
    assert event["pathParameters"] == {"item_id": "a b", "part_id": "7"}
    assert event["headers"] == {"host": "127.0.0.1:3000", "user-agent": "curl/8", "x-multi": "one,two"}
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["body"] == '{"n": 1}'
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"] == {
        "method": "GET",
        "path": "/items/a%20b/parts/7",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.9",
        "userAgent": "curl/8",
    }
    assert context["requestId"] == "req-1"
    assert context["routeKey"] == event["routeKey"]
    assert context["stage"] == "$default"
    assert context["domainName"] == "127.0.0.1:3000"
    assert isinstance(context["timeEpoch"], int)

    parsed = APIGatewayProxyEventV2(event)
    assert parsed.path == "/items/a%20b/parts/7"
    assert parsed.get_query_string_value("q") == "x y"
    assert parsed.json_body == {"n": 1}
    assert parsed.request_context.request_id == "req-1"


def test_empty_parts_are_left_out() -> None:
    event = build_event(HttpRequest("GET", "/items/special"), _match("GET", "/items/special"))

    assert "queryStringParameters" not in event
    assert "pathParameters" not in event
    assert "cookies" not in event
    assert "body" not in event
    assert event["isBase64Encoded"] is False


def test_binary_body_is_base64_encoded() -> None:
    payload = b"\x89PNG\r\n\x1a\n\xff\xfe"
    request = HttpRequest("GET", "/items/special", body=payload)
    event = build_event(request, _match("GET", "/items/special"))

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_handler_response_becomes_http_response() -> None:
    response = http_response(
        {
            "statusCode": 201,
            "headers": {"Content-Type": "application/json"},
            "multiValueHeaders": {"X-Many": ["a", "b"]},
            "cookies": ["session=1; HttpOnly"],
            "body": base64.b64encode(b"\x00\x01").decode(),
            "isBase64Encoded": True,
        }
    )

    assert response.status == 201
    assert response.headers == [
        ("Content-Type", "application/json"),
        ("X-Many", "a"),
        ("X-Many", "b"),
        ("Set-Cookie", "session=1; HttpOnly"),
    ]
    assert response.body == b"\x00\x01"


def test_result_without_status_code_is_a_json_200_like_api_gateway_infers() -> None:
    response = http_response({"ok": True})

    assert response.status == 200
    assert response.headers == [("Content-Type", "application/json")]
    assert json.loads(response.body) == {"ok": True}


def test_committed_fixtures_are_what_the_builder_writes() -> None:
    assert main(["--check"]) == 0


def test_fixture_bodies_are_utf8_json_text() -> None:
    meter = fixture_events()["meter_usage_single"]

    assert meter["isBase64Encoded"] is False
    assert json.loads(meter["body"])["cost_incurred"] == "0.012000000"
    assert meter["headers"]["authorization"] == "Bearer vk_demo"


def test_template_reader_tolerates_short_tags_and_drops_intrinsic_values(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        """
Globals:
  Function:
    Handler: app.lambda_handler
    Timeout: 15
    Layers: [!Ref SharedLayer]
    Environment:
      Variables:
        PLAIN: kept
        NUMBER: 42
        FROM_REF: !Ref Something
        OVERRIDDEN: global
Resources:
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "${AWS::StackName}-table"
  ThingFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/thing/
      Role: !GetAtt Role.Arn
      Environment:
        Variables:
          OVERRIDDEN: !If [Cond, a, b]
          OWN: yes-it-is
      Events:
        Get:
          Type: HttpApi
          Properties:
            ApiId: !Ref HttpApi
            Method: get
            Path: /things/{thing_id}
        Nightly:
          Type: ScheduleV2
          Properties: {ScheduleExpression: rate(1 day)}
"""
    )
    loaded = load_template(template)
    function = loaded.function_by_folder("thing")

    assert function.logical_id == "ThingFunction"
    assert function.code_dir == tmp_path / "functions" / "thing"
    assert function.handler == "app.lambda_handler"
    assert function.timeout_s == 15
    assert dict(function.environment) == {"PLAIN": "kept", "NUMBER": "42", "OWN": "yes-it-is"}
    assert function.routes == (Route("GET", "/things/{thing_id}", "ThingFunction"),)


def test_short_tags_become_long_form_intrinsics() -> None:
    document = yaml.load(
        "a: !Ref X\nb: !If [C, x, !Ref Y]\nc: !GetAtt R.Arn\nd: !Sub {x: 1}\n",
        Loader=CloudFormationLoader,
    )

    assert document == {
        "a": {"Ref": "X"},
        "b": {"Fn::If": ["C", "x", {"Ref": "Y"}]},
        "c": {"Fn::GetAtt": ["R", "Arn"]},
        "d": {"Fn::Sub": {"x": 1}},
    }


def test_template_reader_refuses_routes_it_cannot_serve(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        """
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/fn/
      Handler: app.lambda_handler
      Events:
        Default: {Type: HttpApi}
"""
    )
    with pytest.raises(TemplateError, match="literal Method and Path"):
        load_template(template)


def test_openapi_merge_refuses_a_schema_defined_two_ways() -> None:
    first = {"openapi": "3.1.0", "paths": {"/a": {"get": {"operationId": "a"}}}}
    second = {"openapi": "3.1.0", "paths": {"/b": {"get": {"operationId": "b"}}}}
    first["components"] = {"schemas": {"Problem": {"type": "object", "title": "Problem"}}}
    second["components"] = {"schemas": {"Problem": {"type": "object", "title": "Problème"}}}

    with pytest.raises(OpenApiMergeError, match="components/schemas/Problem differs between A and B"):
        merge_documents({"A": first, "B": second})

    second["components"] = first["components"]
    merged = merge_documents({"A": first, "B": second})
    assert set(merged["paths"]) == {"/a", "/b"}
    assert merged["components"]["schemas"] == first["components"]["schemas"]


def test_openapi_merge_refuses_a_route_declared_twice() -> None:
    document = {"paths": {"/a": {"get": {"operationId": "a"}}}}

    with pytest.raises(OpenApiMergeError, match="GET /a is declared by A and B"):
        merge_documents({"A": document, "B": document})
