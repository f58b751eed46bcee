"""Gemini calls priced exactly from the published table (shipped catalog, markup 1.20)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from billing.domain.catalog import Catalog, GeminiPricing
from billing.domain.errors import InvalidRequest
from billing.domain.pricing import GeminiUsageMetadata, price_gemini_call

CATALOG = Catalog.model_validate(
    yaml.safe_load((Path(__file__).resolve().parents[2] / "catalog" / "catalog.yaml").read_text())
)
GEMINI = next(offer.pricing for offer in CATALOG.offers if isinstance(offer.pricing, GeminiPricing))


def _usage(**counts: int) -> GeminiUsageMetadata:
    return GeminiUsageMetadata.model_validate(counts)


def test_pro_above_200k_prompt_tokens_uses_the_long_context_tier_for_everything() -> None:
    usage = _usage(promptTokenCount=250_000, candidatesTokenCount=4_000, thoughtsTokenCount=1_000)
    priced = price_gemini_call(GEMINI, "gemini-2.5-pro", usage)
    # 250,000 × 2.50 + 5,000 × 15.00 = 625,000 + 75,000 = 700,000 USD per 1M → 0.7 USD; × 1.20
    assert priced.long_context
    assert priced.provider_cost == Decimal("0.7")
    assert priced.cost_nano == 840_000_000


def test_pro_at_exactly_200k_stays_on_the_standard_tier() -> None:
    priced = price_gemini_call(GEMINI, "gemini-2.5-pro", _usage(promptTokenCount=200_000))
    assert not priced.long_context and priced.provider_cost == Decimal("0.25")


def test_flash_with_thinking_and_cached_tokens() -> None:
    usage = _usage(
        promptTokenCount=12_000,
        cachedContentTokenCount=8_000,
        candidatesTokenCount=700,
        thoughtsTokenCount=1_300,
        toolUsePromptTokenCount=500,
    )
    priced = price_gemini_call(GEMINI, "gemini-2.5-flash", usage)
    # fresh input (12,000 − 8,000 + 500) × 0.30 = 1,350; cached 8,000 × 0.03 = 240;
    # output (700 + 1,300) × 2.50 = 5,000 → 6,590 / 1M = 0.00659 USD; × 1.20 = 0.007908
    assert priced.provider_cost == Decimal("0.00659")
    assert priced.cost_nano == 7_908_000
    assert priced.tokens == 12_000 + 500 + 2_000


def test_rounding_happens_once_half_even() -> None:
    # 1 output token of flash-lite: 0.40 / 1M = 0.0000004 USD × 1.20 = 0.00000048 → 480 nano, exact
    assert price_gemini_call(GEMINI, "gemini-2.5-flash-lite", _usage(candidatesTokenCount=1)).cost_nano == 480
    # 1 cached token of flash-lite: 0.01 / 1M × 1.2 = 0.000000012 USD = 12 nano
    usage = _usage(promptTokenCount=1, cachedContentTokenCount=1)
    assert price_gemini_call(GEMINI, "gemini-2.5-flash-lite", usage).cost_nano == 12


@pytest.mark.parametrize(
    ("model", "counts"),
    [
        ("gpt-4", {"promptTokenCount": 1}),
        ("gemini-2.5-pro", {"promptTokenCount": 1, "cachedContentTokenCount": 2}),
    ],
)
def test_unpriced_models_and_impossible_counts_are_refused(model: str, counts: dict[str, int]) -> None:
    with pytest.raises(InvalidRequest):
        price_gemini_call(GEMINI, model, _usage(**counts))


def test_negative_counts_are_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        _usage(promptTokenCount=-5)
