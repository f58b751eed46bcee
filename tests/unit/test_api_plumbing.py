from __future__ import annotations

import inspect
import json
import sys
from http import HTTPStatus
from uuid import UUID, uuid4

import pytest

from billing.api.http import build_app, http_handler
from billing.api.metering_models import UsageBatchBody
from billing.api.problems import STATUS_BY_ERROR, billing_error_response
from billing.domain import errors
from billing.domain.api_keys import KeyRole, api_key_matches, generate_api_key, hash_api_key
from billing.domain.purchase import PurchaseCredentials, Triggers
from billing.services.purchases import authenticate_in, authenticated_view
from local.handlers import LocalLambdaContext


def test_every_client_error_class_has_exactly_one_status() -> None:
    client_errors = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.BillingError) and cls is not errors.BillingError
    }
    assert client_errors == set(STATUS_BY_ERROR)


def test_problem_body_is_rfc9457() -> None:
    response = billing_error_response(errors.InsufficientFunds("not enough", extra={"available_nano": 3}))
    assert response.status_code == HTTPStatus.PAYMENT_REQUIRED
    assert response.headers["Content-Type"] == "application/problem+json"
    body = json.loads(str(response.body))
    assert body == {
        "type": "/problems/insufficient-funds",
        "title": "Insufficient funds",
        "status": 402,
        "detail": "not enough",
        "available_nano": 3,
    }


def test_unauthorized_advertises_bearer() -> None:
    response = billing_error_response(errors.Unauthorized("no"))
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_api_keys_are_long_prefixed_and_hashed() -> None:
    key = generate_api_key(KeyRole.CUSTOMER)
    assert key.startswith("ck_") and len(key) >= 3 + 43
    assert generate_api_key(KeyRole.VENDOR).startswith("vk_")
    assert api_key_matches(key, hash_api_key(key))
    assert not api_key_matches(key + "x", hash_api_key(key))
    assert not api_key_matches(key, None)


def test_triggers_must_be_ordered() -> None:
    with pytest.raises(errors.InvalidRequest):
        Triggers(low_nano=5, critical_nano=5, termination_nano=1)
    with pytest.raises(errors.InvalidRequest):
        Triggers(low_nano=5, critical_nano=3, termination_nano=-1)


class _FakePurchases:
    def __init__(self, known: dict[UUID, PurchaseCredentials]) -> None:
        self.known = known

    def credentials(self, purchase_id: UUID) -> PurchaseCredentials | None:
        return self.known.get(purchase_id)

    def view_with_credentials(self, purchase_id: UUID) -> tuple[str, PurchaseCredentials] | None:
        credentials = self.known.get(purchase_id)
        return (f"view of {purchase_id}", credentials) if credentials else None


class _FakeUnit:
    def __init__(self, purchases: _FakePurchases) -> None:
        self.purchases = purchases


def test_unknown_purchase_malformed_id_and_wrong_key_fail_identically() -> None:
    purchase_id = uuid4()
    customer, vendor = generate_api_key(KeyRole.CUSTOMER), generate_api_key(KeyRole.VENDOR)
    unit = _FakeUnit(
        _FakePurchases({purchase_id: PurchaseCredentials(hash_api_key(customer), hash_api_key(vendor))})
    )
    assert authenticate_in(unit, str(purchase_id), customer, KeyRole.CUSTOMER) == purchase_id  # type: ignore[arg-type]
    assert authenticate_in(unit, str(purchase_id), vendor, KeyRole.VENDOR) == purchase_id  # type: ignore[arg-type]
    view = f"view of {purchase_id}"
    assert authenticated_view(unit, str(purchase_id), customer, KeyRole.CUSTOMER) == view  # type: ignore[arg-type]
    assert authenticated_view(unit, str(purchase_id), vendor, KeyRole.VENDOR) == view  # type: ignore[arg-type]
    details = set()
    for raw_id, key, role in [
        (str(uuid4()), customer, KeyRole.CUSTOMER),
        ("../../etc/passwd", customer, KeyRole.CUSTOMER),
        (str(purchase_id), "ck_wrong", KeyRole.CUSTOMER),
        (str(purchase_id), vendor, KeyRole.CUSTOMER),
        (str(purchase_id), customer, KeyRole.VENDOR),
    ]:
        for check in (authenticate_in, authenticated_view):
            with pytest.raises(errors.Unauthorized) as caught:
                check(unit, raw_id, key, role)  # type: ignore[arg-type]
            details.add(caught.value.detail)
    assert len(details) == 1


def _event(body: str | None, content_type: str | None) -> dict[str, object]:
    headers = {"content-type": content_type} if content_type else {}
    return {
        "version": "2.0",
        "routeKey": "POST /echo",
        "rawPath": "/echo",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "http": {
                "method": "POST",
                "path": "/echo",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "t",
            },
            "requestId": "r-1",
            "routeKey": "POST /echo",
            "stage": "$default",
        },
        "body": body,
        "isBase64Encoded": False,
    }


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ('{"a": 1}', "application/json", 200),
        ('{"a": 1}', "application/json; charset=utf-8", 200),
        ('{"a": 1}', "application/problem+json", 200),
        (None, None, 200),
        ('{"a": 1}', "application/x-www-form-urlencoded", 415),
        ('{"a": 1}', None, 415),
        ("x" * 70_000, "application/json", 413),
        ("[" * 20_000 + "]" * 20_000, "application/json", 422),
        ('{"a": ' + "[" * 20_000 + "]" * 20_000 + "}", "application/json", 422),
    ],
)
def test_bodies_must_be_declared_json_and_small(
    body: str | None, content_type: str | None, status: int
) -> None:
    # Lambda's interpreter keeps the default recursion limit; some test tools in this suite raise it.
    default_limit, sys_limit = 1000, sys.getrecursionlimit()
    sys.setrecursionlimit(default_limit)
    try:
        _assert_answer(body, content_type, status)
    finally:
        sys.setrecursionlimit(sys_limit)


def _assert_answer(body: str | None, content_type: str | None, status: int) -> None:
    app = build_app()

    @app.post("/echo")
    def echo() -> dict[str, str]:
        return {"ok": "yes"}

    response = http_handler(app)(_event(body, content_type), LocalLambdaContext("EchoFunction"))
    assert response["statusCode"] == status
    if status >= 400:
        assert response["headers"]["Content-Type"] == "application/problem+json"
        assert json.loads(response["body"])["status"] == status


def test_a_batch_body_has_a_short_repr() -> None:
    """Powertools formats route arguments into a debug message per request: keep it cheap."""

    event = {"idempotency_key": "k", "usage_amount": "1", "unit": "call", "cost_incurred": "0.000001000"}
    body = UsageBatchBody.model_validate(
        {"events": [{**event, "idempotency_key": f"k{i}"} for i in range(100)]}
    )

    assert repr(body) == "UsageBatchBody(<100 events>)"
