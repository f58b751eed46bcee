"""The catalog in Postgres: import/export round trip, pruning, and the three public routes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from local.handlers import LocalLambdaContext, load_handler
from local.seed import DEFAULT_CATALOG_PATH
from local.template import load_template
from tests.conftest import load_event
from vendorctl.cli import main

TEMPLATE = load_template()


def _vendorctl(database_url: str, *arguments: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--database-url", database_url, *arguments], out, err)
    return code, out.getvalue(), err.getvalue()


def _invoke(folder: str, event: dict[str, Any]) -> dict[str, Any]:
    function = next(function for function in TEMPLATE.functions if function.folder == folder)
    response: dict[str, Any] = load_handler(function)(event, LocalLambdaContext.for_function(function))
    return response


@pytest.fixture
def imported(db: psycopg.Connection[Any], database_url: str) -> None:
    code, _, err = _vendorctl(database_url, "catalog", "import", str(DEFAULT_CATALOG_PATH))
    assert code == 0, err


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_export_import_export_is_identical(
    imported: None, database_url: str, tmp_path: Path, suffix: str
) -> None:
    first, second = tmp_path / f"first.{suffix}", tmp_path / f"second.{suffix}"
    assert _vendorctl(database_url, "catalog", "export", str(first))[0] == 0
    code, out, _ = _vendorctl(database_url, "catalog", "import", str(first))
    assert code == 0 and "no changes" in out
    assert _vendorctl(database_url, "catalog", "export", str(second))[0] == 0
    assert first.read_text() == second.read_text()


def test_dry_run_changes_nothing_and_prune_deactivates(
    imported: None, db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    code, exported, _ = _vendorctl(database_url, "catalog", "export", "--format", "json")
    document = json.loads(exported)
    document["offers"] = [offer for offer in document["offers"] if offer["id"] == "gemini-api-key"]
    document["lists"] = [item for item in document["lists"] if item["id"] == "ai-assistants"]
    smaller = tmp_path / "smaller.json"
    smaller.write_text(json.dumps(document))

    code, out, _ = _vendorctl(database_url, "catalog", "import", str(smaller), "--prune", "--dry-run")
    assert code == 0 and "offers_deactivated: s3-bucket" in out and "would change" in out
    assert db.execute("SELECT count(*) FROM appstore_lists").fetchone() == (4,)

    code, out, _ = _vendorctl(database_url, "catalog", "import", str(smaller), "--prune")
    assert code == 0
    assert db.execute("SELECT id FROM offers WHERE NOT active").fetchall() == [("s3-bucket",)]
    assert db.execute("SELECT id FROM appstore_lists").fetchall() == [("ai-assistants",)]
    code, listing, _ = _vendorctl(database_url, "offers", "list")
    assert "s3-bucket" in listing and "inactive" in listing


def test_an_invalid_file_changes_nothing(
    imported: None, db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    before = db.execute("SELECT id, updated_at FROM offers ORDER BY id").fetchall()
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_CATALOG_PATH.read_text().replace('markup: "1.25"', "markup: 1.25"))
    code, _, err = _vendorctl(database_url, "catalog", "import", str(bad))
    assert code == 2 and "offers[0].pricing.s3_cost_export.markup" in err
    assert db.execute("SELECT id, updated_at FROM offers ORDER BY id").fetchall() == before


def test_offer_route(imported: None, handler_env: None) -> None:
    response = _invoke("offer_get", load_event("offer_get_demo"))
    assert response["statusCode"] == 200, response
    assert response["headers"]["Cache-Control"] == "public, max-age=60"
    offer = json.loads(response["body"])
    assert offer["offer_id"] == "gemini-api-key" and offer["min_deposit"] == "20.000000000"
    assert offer["pricing"]["models"]["gemini-2.5-pro"]["input_per_1m"] == "1.25"
    base = next(option for option in offer["payment_options"] if option["chain"] == "base")
    assert base == {
        "chain": "base",
        "chain_id": 8453,
        "token": "USDC",
        "token_address": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "decimals": 6,
        "confirmations": 20,
    }
    assert offer["default_triggers"] == {
        "low": "5.000000000",
        "critical": "2.000000000",
        "termination": "0.500000000",
        "grace_period_hours": 24,
    }
    assert not {"suggest_tags", "active", "position"} & offer.keys()


def test_unknown_and_inactive_offers_are_404(
    imported: None, db: psycopg.Connection[Any], handler_env: None
) -> None:
    unknown = _invoke("offer_get", load_event("offer_get_unknown"))
    assert unknown["statusCode"] == 404
    assert unknown["headers"]["Content-Type"] == "application/problem+json"
    db.execute("UPDATE offers SET active = false WHERE id = 'gemini-api-key'")
    assert _invoke("offer_get", load_event("offer_get_demo"))["statusCode"] == 404


def test_list_route_and_lists_without_available_offers(
    imported: None, db: psycopg.Connection[Any], handler_env: None
) -> None:
    response = _invoke("appstore_list", load_event("appstore_list_get"))
    assert response["statusCode"] == 200, response
    body = json.loads(response["body"])
    assert [offer["offer_id"] for offer in body["offers"]] == ["gemini-api-key", "s3-bucket"]
    assert body["offers"][0]["url"].endswith("/offer/gemini-api-key")
    assert _invoke("appstore_list", load_event("appstore_list_unknown"))["statusCode"] == 404
    db.execute("UPDATE offers SET active = false")
    assert _invoke("appstore_list", load_event("appstore_list_get"))["statusCode"] == 404


def test_suggest_route_reads_headers_and_explains(imported: None, handler_env: None) -> None:
    response = _invoke("appstore_suggest", load_event("appstore_suggest_context"))
    assert response["statusCode"] == 200, response
    assert "Accept-Language" in response["headers"]["Vary"]
    body = json.loads(response["body"])
    assert body["context"]["country"] == "DE"
    top = body["lists"][0]
    assert top["list_id"] == "speicher-de"
    assert top["url"].endswith("/appstore/list/speicher-de")
    assert "available for your country (DE)" in top["reasons"] and top["reason"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"country": "Germany"}, 422),
        ({"language": "de_DE;;"}, 422),
        ({"keyboard": "../../etc"}, 422),
        ({"profession": "x" * 101}, 422),
        ({"country": "ZZ", "language": "tlh"}, 200),
    ],
)
def test_suggest_query_validation(
    imported: None, handler_env: None, query: dict[str, str], status: int
) -> None:
    event = load_event("appstore_suggest_no_context")
    event["queryStringParameters"] = query
    response = _invoke("appstore_suggest", event)
    assert response["statusCode"] == status, response
    if status == 422:
        problem = json.loads(response["body"])
        assert next(iter(query)) in problem["errors"][0]["loc"]


def test_malformed_headers_never_fail(imported: None, handler_env: None) -> None:
    event = load_event("appstore_suggest_no_context")
    event["headers"] |= {
        "accept-language": ";q=;;,,\u00e9\u00e8",
        "cloudfront-viewer-country": "\u00c4\u00d6",
    }
    response = _invoke("appstore_suggest", event)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["context"] == {
        "country": None,
        "languages": [],
        "keyboard": None,
        "profession": None,
        "preferences": [],
    }


def test_checkout_with_the_rpc_unreachable_is_a_503_problem_and_writes_nothing(
    imported: None, db: psycopg.Connection[Any], handler_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPC_URLS_BASE", "http://127.0.0.1:9")  # closed port: connection refused at once
    event = load_event("checkout_wallet_create_devchain_usdc")
    event["body"] = json.dumps({"chain": "base", "token": "USDC"})
    response = _invoke("checkout_wallet_create", event)
    assert response["statusCode"] == 503, response
    assert response["headers"]["Content-Type"] == "application/problem+json"
    assert "127.0.0.1" not in response["body"]  # RPC URLs may carry API keys: never shown
    assert db.execute("SELECT count(*) FROM checkout_wallets").fetchone() == (0,)
