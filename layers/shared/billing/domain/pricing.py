"""Exact usage pricing: a Gemini call from its ``usageMetadata``, priced from the offer's dated table.

Token counts follow Gemini's ``usageMetadata``: ``promptTokenCount`` includes
the cached tokens; thinking tokens are billed as output; tool-use prompt
tokens are billed as input. A prompt above the model's long-context threshold
is billed entirely at the long-context prices. Everything is Decimal; the
charge is rounded once, half-even, to nano-USD.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from billing.domain.catalog import GeminiModelPrices, GeminiPricing
from billing.domain.errors import InvalidRequest
from billing.domain.money import round_usd_to_nano

_PER_MILLION = Decimal(1_000_000)
_MAX_TOKENS = 10**9


class GeminiUsageMetadata(BaseModel):
    """The ``usageMetadata`` block of a Gemini response (camelCase, as the API returns it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt_token_count: int = Field(default=0, ge=0, le=_MAX_TOKENS, alias="promptTokenCount")
    cached_content_token_count: int = Field(default=0, ge=0, le=_MAX_TOKENS, alias="cachedContentTokenCount")
    candidates_token_count: int = Field(default=0, ge=0, le=_MAX_TOKENS, alias="candidatesTokenCount")
    thoughts_token_count: int = Field(default=0, ge=0, le=_MAX_TOKENS, alias="thoughtsTokenCount")
    tool_use_prompt_token_count: int = Field(default=0, ge=0, le=_MAX_TOKENS, alias="toolUsePromptTokenCount")


@dataclass(frozen=True)
class PricedUsage:
    cost_nano: int
    provider_cost: Decimal  # before markup, exact
    tokens: int
    long_context: bool


def price_gemini_call(pricing: GeminiPricing, model: str, usage: GeminiUsageMetadata) -> PricedUsage:
    prices = pricing.models.get(model)
    if prices is None:
        raise InvalidRequest(
            f"model {model!r} is not priced by this offer; priced: {', '.join(pricing.models)}"
        )
    if usage.cached_content_token_count > usage.prompt_token_count:
        raise InvalidRequest("cachedContentTokenCount cannot exceed promptTokenCount")
    long_context = _is_long(prices, usage.prompt_token_count)
    input_price, output_price, cached_price = _tier(prices, long_context)
    fresh_input = (
        usage.prompt_token_count - usage.cached_content_token_count + usage.tool_use_prompt_token_count
    )
    output = usage.candidates_token_count + usage.thoughts_token_count
    provider_cost = (
        fresh_input * input_price + usage.cached_content_token_count * cached_price + output * output_price
    ) / _PER_MILLION
    tokens = usage.prompt_token_count + usage.tool_use_prompt_token_count + output
    return PricedUsage(round_usd_to_nano(provider_cost * pricing.markup), provider_cost, tokens, long_context)


def _is_long(prices: GeminiModelPrices, prompt_tokens: int) -> bool:
    threshold = prices.long_context_threshold_tokens
    return threshold is not None and prompt_tokens > threshold


def _tier(prices: GeminiModelPrices, long_context: bool) -> tuple[Decimal, Decimal, Decimal]:
    if long_context:
        assert prices.input_per_1m_long is not None  # the catalog model guarantees the whole tier
        assert prices.output_per_1m_long is not None
        assert prices.cached_input_per_1m_long is not None
        return prices.input_per_1m_long, prices.output_per_1m_long, prices.cached_input_per_1m_long
    return prices.input_per_1m, prices.output_per_1m, prices.cached_input_per_1m


def price_explicit_cost(cost_usd: Decimal, markup: Decimal | None = None) -> int:
    """A cost the vendor already computed, optionally marked up, rounded once."""
    return round_usd_to_nano(cost_usd * (markup if markup is not None else Decimal(1)))
