"""Catalog files: the shipped one is valid, and every mistake is refused with the field named."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.domain.catalog import Catalog, plan_import
from vendorctl.cli import CatalogFileError, main, read_catalog_file, render_catalog

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "catalog" / "catalog.yaml"
DOCUMENT: dict[str, Any] = yaml.safe_load(DEFAULT_FILE.read_text())


def test_the_shipped_catalog_is_valid_and_dated() -> None:
    catalog = read_catalog_file(DEFAULT_FILE)
    assert [offer.kind.value for offer in catalog.offers] == ["s3_bucket", "gemini_api_key"]
    gemini = catalog.offers[1].pricing
    assert gemini.meter == "gemini_tokens" and "gemini-2.5-pro" in gemini.models
    assert all(offer.pricing.prices_as_of.year >= 2026 for offer in catalog.offers)


@pytest.mark.parametrize("file_format", ["yaml", "json"])
def test_render_and_read_round_trip_exactly(tmp_path: Path, file_format: str) -> None:
    catalog = read_catalog_file(DEFAULT_FILE)
    first = tmp_path / f"first.{file_format}"
    first.write_text(render_catalog(catalog, file_format))
    again = read_catalog_file(first)
    assert again == catalog
    assert render_catalog(again, file_format) == first.read_text()


def _broken(change: str) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    offer, gemini, first_list = document["offers"][0], document["offers"][1], document["lists"][0]
    if change == "float markup":
        offer["pricing"]["markup"] = 1.25
    elif change == "unknown chain":
        offer["payment_options"][0]["chain"] = "dogechain"
    elif change == "token not on chain":
        offer["payment_options"][0] = {"chain": "sepolia", "token": "USDT"}
    elif change == "unordered triggers":
        offer["default_triggers"]["critical"] = "9"
    elif change == "unknown offer in list":
        first_list["offer_ids"].append("no-such-offer")
    elif change == "duplicate offer id":
        gemini["id"] = offer["id"]
    elif change == "meter for another kind":
        offer["kind"] = "gemini_api_key"
    elif change == "unknown field":
        offer["colour"] = "blue"
    elif change == "too precise price":
        gemini["pricing"]["models"]["gemini-2.5-flash"]["input_per_1m"] = "0.3000000000001"
    elif change == "half a long-context tier":
        del gemini["pricing"]["models"]["gemini-2.5-pro"]["output_per_1m_long"]
    elif change == "deposit below low trigger":
        offer["min_deposit"] = "5"
    elif change == "float deposit":
        offer["min_deposit"] = 10.5
    elif change == "missing title":
        del first_list["title"]
    return document


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("float markup", "offers[0].pricing.s3_cost_export.markup"),
        ("unknown chain", "offers[0].payment_options[0]: unknown chain 'dogechain'"),
        ("token not on chain", "offers[0].payment_options[0]: token 'USDT' is not accepted on sepolia"),
        ("unordered triggers", "offers[0].default_triggers: triggers must satisfy"),
        ("unknown offer in list", "list developer-cloud names unknown offers: no-such-offer"),
        ("duplicate offer id", "offer id used twice: s3-bucket"),
        ("meter for another kind", "offers[0]: a gemini_api_key offer is priced with meter 'gemini_tokens'"),
        ("unknown field", "offers[0].colour: Extra inputs are not permitted"),
        ("too precise price", "models.gemini-2.5-flash.input_per_1m"),
        ("half a long-context tier", "models.gemini-2.5-pro: long_context_threshold_tokens and all three"),
        ("deposit below low trigger", "offers[0]: min_deposit must be above the low trigger"),
        ("float deposit", "offers[0].min_deposit: must be a decimal string"),
        ("missing title", "lists[0].title: Field required"),
    ],
)
def test_invalid_files_are_refused_naming_the_field(tmp_path: Path, change: str, named: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(_broken(change)))
    with pytest.raises(CatalogFileError) as refused:
        read_catalog_file(path)
    assert named in str(refused.value)


def test_syntax_errors_and_missing_files_are_clear(tmp_path: Path) -> None:
    broken = tmp_path / "catalog.yaml"
    broken.write_text("offers: [\n")
    with pytest.raises(CatalogFileError, match="not valid YAML"):
        read_catalog_file(broken)
    with pytest.raises(CatalogFileError, match="cannot read"):
        read_catalog_file(tmp_path / "absent.yaml")


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["catalog", "validate", str(DEFAULT_FILE)], out, err) == 0
    assert "valid (2 offers, 4 lists)" in out.getvalue()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_broken("unknown chain")))
    assert main(["catalog", "validate", str(bad)], out, err) == 2
    assert "unknown chain 'dogechain'" in err.getvalue()


def test_import_plan_names_what_changes() -> None:
    current = Catalog.model_validate(DOCUMENT)
    edited = copy.deepcopy(DOCUMENT)
    edited["offers"][0]["title"] = "Renamed"
    edited["lists"] = edited["lists"][:2]
    incoming = Catalog.model_validate(edited)
    assert plan_import(current, current, prune=True).nothing
    changes = plan_import(current, incoming, prune=True)
    assert changes.offers_changed == ["s3-bucket"]
    assert changes.lists_removed == ["speicher-de", "storage-backup"]
    assert plan_import(current, incoming, prune=False).lists_removed == []
