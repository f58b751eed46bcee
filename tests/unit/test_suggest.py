"""Ranking app-store lists from a customer's context: a table of contexts, and messy inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from billing.api.catalog_models import customer_context
from billing.domain.catalog import Catalog
from billing.domain.suggest import CustomerContext, WeightedLanguage, parse_accept_language, rank_lists

CATALOG = Catalog.model_validate(
    yaml.safe_load((Path(__file__).resolve().parents[2] / "catalog" / "catalog.yaml").read_text())
)
ACTIVE = {offer.id: offer for offer in CATALOG.offers}


def _context(
    *,
    country: str | None = None,
    language: str | None = None,
    keyboard: str | None = None,
    profession: str | None = None,
    preferences: str | None = None,
    headers: dict[str, str] | None = None,
) -> CustomerContext:
    return customer_context(
        country=country,
        language=language,
        keyboard=keyboard,
        profession=profession,
        preferences=preferences,
        headers=headers or {},
    )


def _ranked(context: CustomerContext) -> list[str]:
    return [suggestion.appstore_list.id for suggestion in rank_lists(context, CATALOG.lists, ACTIVE)]


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        # No context: the vendor's priorities (10, 5, 3, 0).
        (_context(), ["developer-cloud", "ai-assistants", "storage-backup", "speicher-de"]),
        # German keyboard + de-DE + developer: the German storage/AI list, then the developer list.
        (
            _context(keyboard="de", language="de-DE", profession="developer"),
            ["speicher-de", "developer-cloud", "ai-assistants", "storage-backup"],
        ),
        # The same from headers only (CloudFront country, browser languages).
        (
            _context(
                headers={"cloudfront-viewer-country": "AT", "accept-language": "de-AT,de;q=0.9,en;q=0.5"}
            ),
            ["speicher-de", "developer-cloud", "ai-assistants", "storage-backup"],
        ),
        # A photographer who wants backups.
        (
            _context(profession="wedding photographer", preferences="backup, photos"),
            ["storage-backup", "speicher-de", "developer-cloud", "ai-assistants"],
        ),
        # A translator interested in AI, from the US.
        (
            _context(country="US", language="en-US", profession="Translator", preferences="ai"),
            ["ai-assistants", "speicher-de", "developer-cloud", "storage-backup"],
        ),
        # Unknown country and language: the configured order (the German list is marked as foreign).
        (
            _context(country="ZZ", language="xx"),
            ["developer-cloud", "ai-assistants", "storage-backup", "speicher-de"],
        ),
    ],
    ids=["default", "german-developer", "austrian-browser", "photographer", "us-translator", "unknown"],
)
def test_ranking_table(context: CustomerContext, expected: list[str]) -> None:
    assert _ranked(context) == expected


def test_each_result_says_why() -> None:
    suggestions = rank_lists(
        _context(keyboard="de-ch", language="de-CH", country="CH"), CATALOG.lists, ACTIVE
    )
    top = suggestions[0]
    assert top.appstore_list.id == "speicher-de"
    assert top.reasons == (
        "available for your country (CH)",
        "in your language (de, q=1)",
        "suits your keyboard layout (de-ch)",
    )
    assert all(suggestion.reasons for suggestion in suggestions)
    assert suggestions[-1].reasons == ("recommended by the vendor",)


def test_ranking_is_deterministic_and_ignores_lists_without_active_offers() -> None:
    context = _context(profession="developer")
    assert _ranked(context) == _ranked(context)
    only_gemini = {"gemini-api-key": ACTIVE["gemini-api-key"]}
    ranked = [item.appstore_list.id for item in rank_lists(context, CATALOG.lists, only_gemini)]
    assert "storage-backup" not in ranked
    assert set(ranked) == {"developer-cloud", "ai-assistants", "speicher-de"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("de-DE,de;q=0.9,en;q=0.8", [("de-de", 1000), ("de", 900), ("en", 800)]),
        ("en;q=0.5, fr", [("fr", 1000), ("en", 500)]),
        ("*;q=0.1, es", [("es", 1000)]),
        ("de;q=0", []),
        ("de;q=2, fr;q=abc, it;q=0.7", [("it", 700)]),
        (";;;,,,=q", []),
        ("en-US;q=0.8, en-US;q=0.9", [("en-us", 900)]),
        ("x" * 5000, []),
        ("", []),
        (None, []),
        ("zh-Hant-TW;q=0.95,ja", [("ja", 1000), ("zh-hant-tw", 950)]),
        ("de-DE;q=0.9;level=1", [("de-de", 900)]),
        ("\u00fc\u00f6-DE", []),
    ],
)
def test_accept_language_is_parsed_forgivingly(header: str | None, expected: list[tuple[str, int]]) -> None:
    assert [(language.tag, language.q) for language in parse_accept_language(header)] == expected


def test_query_wins_over_headers_and_bad_headers_are_ignored() -> None:
    context = _context(
        country="fr",
        language="it",
        headers={"cloudfront-viewer-country": "DE", "accept-language": "de"},
    )
    assert context.country == "FR"
    assert context.languages == (WeightedLanguage("it", 1000),)
    ignored = _context(headers={"cloudfront-viewer-country": "Germany", "accept-language": "!!"})
    assert (ignored.country, ignored.languages) == (None, ())
    wishes = _context(preferences=" ai ,, storage ," + ",x" * 20)
    assert wishes.preferences[:2] == ("ai", "storage") and len(wishes.preferences) == 10
