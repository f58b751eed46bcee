"""Every public route, over real HTTP, answers in the shapes the committed OpenAPI document promises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi_document

from billing.api.openapi import OPENAPI_DOCUMENT_PATH
from tests.e2e.conftest import Local

DOCUMENT: dict[str, Any] = json.loads(OPENAPI_DOCUMENT_PATH.read_text())


def test_the_committed_document_is_valid_openapi() -> None:
    validate_openapi_document(DOCUMENT)


def _assert_conforms(method: str, template_path: str, status: int, content_type: str, body: bytes) -> None:
    operation = DOCUMENT["paths"][template_path][method.lower()]
    response = operation["responses"].get(str(status))
    assert response is not None, (
        f"{method} {template_path} answered {status}, which the document does not list"
    )
    media = response["content"].get(content_type.split(";", maxsplit=1)[0])
    assert media is not None, f"{status} is documented without {content_type}"
    schema = {**media["schema"], "components": DOCUMENT["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(json.loads(body)), key=str)
    assert not errors, "\n".join(f"{list(error.absolute_path)}: {error.message}" for error in errors)


@pytest.mark.parametrize(
    ("method", "path", "template_path", "key", "status"),
    [
        ("GET", "/health", "/health", None, 200),
        (
            "GET",
            "/appstore/suggest?keyboard=de&language=de-DE,en;q=0.5&profession=developer",
            "/appstore/suggest",
            None,
            200,
        ),
        ("GET", "/appstore/suggest", "/appstore/suggest", None, 200),
        ("GET", "/appstore/suggest?country=Deutschland", "/appstore/suggest", None, 422),
        ("GET", "/appstore/list/developer-cloud", "/appstore/list/{list_id}", None, 200),
        ("GET", "/appstore/list/nothing-here", "/appstore/list/{list_id}", None, 404),
        ("GET", "/offer/gemini-api-key", "/offer/{offer_id}", None, 200),
        ("GET", "/offer/s3-bucket", "/offer/{offer_id}", None, 200),
        ("GET", "/offer/nothing-here", "/offer/{offer_id}", None, 404),
        ("GET", "/purchase/{demo}", "/purchase/{purchase_id}", "customer", 200),
        ("GET", "/purchase/{demo}", "/purchase/{purchase_id}", "vendor", 401),
        ("POST", "/purchase/{demo}/meter-usage", "/purchase/{purchase_id}/meter-usage", "vendor", 422),
        ("POST", "/purchase/{demo}/authorize", "/purchase/{purchase_id}/authorize", "vendor", 422),
    ],
)
def test_public_routes_answer_in_the_documented_shape(
    local: Local, method: str, path: str, template_path: str, key: str | None, status: int
) -> None:
    keys = {"customer": local.seed.customer_key, "vendor": local.seed.vendor_key}
    answer = local.request(
        method,
        path.replace("{demo}", local.seed.purchase_id),
        key=keys[key] if key else None,
        body=b"{}" if method == "POST" else None,
    )
    assert answer.status == status, answer
    _assert_conforms(method, template_path, status, answer.headers["Content-Type"], answer.body)


def test_suggest_links_lead_to_lists_and_lists_to_offers(local: Local) -> None:
    suggestions = local.request("GET", "/appstore/suggest?country=CH").json()["lists"]
    assert suggestions[0]["list_id"] == "speicher-de"
    base = local.server.base_url
    for suggestion in suggestions:
        assert suggestion["url"].startswith(base)
        listed = local.request("GET", suggestion["url"].removeprefix(base))
        assert listed.status == 200
        for offer in listed.json()["offers"]:
            assert local.request("GET", offer["url"].removeprefix(base)).status == 200
