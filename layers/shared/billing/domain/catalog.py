"""The vendor's catalog: offers and app-store lists, as data validated by these models.

The same models validate catalog files (``vendorctl catalog import``), rows read
back from Postgres and, reduced, the public API answers. Prices are exact
decimal strings (USD); they are multiplied exactly and rounded once per charge.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from billing.domain.chains import chain_registry
from billing.domain.errors import InvalidRequest
from billing.domain.money import PositiveUsdAmount, UsdAmount

_PRICE_PATTERN = r"^\d{1,9}(\.\d{1,12})?$"


def _parse_decimal_string(value: object) -> Decimal:
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "0.30", not a number')
    text = value.strip()
    if not re.fullmatch(_PRICE_PATTERN, text):
        raise ValueError(f"{value!r} is not a plain non-negative decimal with at most 12 decimals")
    return Decimal(text)


#: A non-negative price in USD (per unit stated by the field name), exact.
Price = Annotated[
    Decimal,
    BeforeValidator(_parse_decimal_string),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _PRICE_PATTERN, "examples": ["0.30"]}),
]


def _parse_markup(value: object) -> Decimal:
    markup = _parse_decimal_string(value)
    if not Decimal("0.01") <= markup <= Decimal(100):
        raise ValueError("markup is a multiplier between 0.01 and 100 (1.25 = cost + 25%)")
    return markup


Markup = Annotated[
    Decimal,
    BeforeValidator(_parse_markup),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _PRICE_PATTERN, "examples": ["1.25"]}),
]

CatalogId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
LanguageTag = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")]
Tag = Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[a-z0-9][a-z0-9 .+#&/-]*$")]


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, defer_build=True)


class OfferKind(StrEnum):
    S3_BUCKET = "s3_bucket"
    GEMINI_API_KEY = "gemini_api_key"


class GeminiModelPrices(CatalogModel):
    """USD per 1M tokens. Thinking tokens are billed as output, as Google bills them."""

    input_per_1m: Price
    output_per_1m: Price
    cached_input_per_1m: Price
    #: Prompts above this many tokens use the ``*_long`` prices (e.g. 200,000 for 2.5 Pro).
    long_context_threshold_tokens: int | None = Field(default=None, gt=0)
    input_per_1m_long: Price | None = None
    output_per_1m_long: Price | None = None
    cached_input_per_1m_long: Price | None = None

    @model_validator(mode="after")
    def _long_prices_go_together(self) -> GeminiModelPrices:
        long_prices = (self.input_per_1m_long, self.output_per_1m_long, self.cached_input_per_1m_long)
        present = [price is not None for price in long_prices]
        consistent = not any(present) if self.long_context_threshold_tokens is None else all(present)
        if not consistent:
            raise ValueError("long_context_threshold_tokens and all three *_per_1m_long prices go together")
        return self


class GeminiPricing(CatalogModel):
    meter: Literal["gemini_tokens"]
    prices_as_of: date
    markup: Markup
    models: dict[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,80}$")], GeminiModelPrices] = Field(
        min_length=1
    )


class S3UnitPrices(CatalogModel):
    """Dated list prices, for estimates before the cost export arrives (the export is final)."""

    storage_gb_month: dict[Annotated[str, Field(pattern=r"^[A-Z_]{2,40}$")], Price] = Field(min_length=1)
    put_per_1k: Price
    get_per_1k: Price
    transfer_out_per_gb: Price


class S3Pricing(CatalogModel):
    """Pass-through: the AWS cost export's cost × markup, rounded once per charge."""

    meter: Literal["s3_cost_export"]
    prices_as_of: date
    markup: Markup
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    unit_prices: S3UnitPrices


Pricing = Annotated[GeminiPricing | S3Pricing, Field(discriminator="meter")]
_METER_FOR_KIND = {OfferKind.S3_BUCKET: "s3_cost_export", OfferKind.GEMINI_API_KEY: "gemini_tokens"}


class PaymentOption(CatalogModel):
    chain: str
    token: str

    @model_validator(mode="after")
    def _known_to_the_registry(self) -> PaymentOption:
        try:
            chain_registry().token(self.chain, self.token)
        except InvalidRequest as exc:
            raise ValueError(exc.detail) from exc
        return self


class DefaultTriggers(CatalogModel):
    low: UsdAmount
    critical: UsdAmount
    termination: UsdAmount
    #: After suspension, how long before resources are deleted.
    grace_period_hours: int = Field(ge=1, le=24 * 90)

    @model_validator(mode="after")
    def _ordered(self) -> DefaultTriggers:
        if not self.low > self.critical > self.termination >= 0:
            raise ValueError("triggers must satisfy low > critical > termination >= 0")
        return self


def _lowercase_all(values: object) -> object:
    if isinstance(values, list):
        return [value.strip().lower() if isinstance(value, str) else value for value in values]
    return values


def _uppercase_all(values: object) -> object:
    if isinstance(values, list):
        return [value.strip().upper() if isinstance(value, str) else value for value in values]
    return values


class SuggestTags(CatalogModel):
    """Who an offer or list is for; matched against the customer's context by the suggester."""

    countries: Annotated[list[CountryCode], BeforeValidator(_uppercase_all)] = Field(default_factory=list)
    languages: Annotated[list[LanguageTag], BeforeValidator(_lowercase_all)] = Field(default_factory=list)
    keyboards: Annotated[list[LanguageTag], BeforeValidator(_lowercase_all)] = Field(default_factory=list)
    professions: Annotated[list[Tag], BeforeValidator(_lowercase_all)] = Field(default_factory=list)
    keywords: Annotated[list[Tag], BeforeValidator(_lowercase_all)] = Field(default_factory=list)


class Offer(CatalogModel):
    id: CatalogId
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: OfferKind
    title: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=4_000)
    pricing: Pricing
    min_deposit: PositiveUsdAmount
    payment_options: list[PaymentOption] = Field(min_length=1)
    default_triggers: DefaultTriggers
    suggest_tags: SuggestTags = Field(default_factory=SuggestTags)
    active: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Offer:
        if self.pricing.meter != _METER_FOR_KIND[self.kind]:
            raise ValueError(f"a {self.kind} offer is priced with meter {_METER_FOR_KIND[self.kind]!r}")
        pairs = [(option.chain, option.token) for option in self.payment_options]
        if len(set(pairs)) != len(pairs):
            raise ValueError("payment_options lists the same (chain, token) twice")
        if self.min_deposit <= self.default_triggers.low:
            raise ValueError("min_deposit must be above the low trigger, or every purchase starts 'low'")
        return self


class AppstoreList(CatalogModel):
    id: CatalogId
    title: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=4_000)
    offer_ids: list[CatalogId] = Field(min_length=1)
    suggest_tags: SuggestTags = Field(default_factory=SuggestTags)
    #: Default ranking weight: with no matching context, higher priority comes first.
    priority: int = Field(default=0, ge=-1_000, le=1_000)

    @field_validator("offer_ids")
    @classmethod
    def _no_repeats(cls, offer_ids: list[str]) -> list[str]:
        if len(set(offer_ids)) != len(offer_ids):
            raise ValueError("an offer appears twice in the list")
        return offer_ids


class Catalog(CatalogModel):
    """A whole catalog file: every offer and list, cross-checked."""

    offers: list[Offer] = Field(default_factory=list)
    lists: list[AppstoreList] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_references(self) -> Catalog:
        for label, values in (
            ("offer id", [offer.id for offer in self.offers]),
            ("offer sku", [offer.sku for offer in self.offers]),
            ("list id", [appstore_list.id for appstore_list in self.lists]),
        ):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                raise ValueError(f"{label} used twice: {', '.join(repeated)}")
        known = {offer.id for offer in self.offers}
        for appstore_list in self.lists:
            missing = [offer_id for offer_id in appstore_list.offer_ids if offer_id not in known]
            if missing:
                raise ValueError(f"list {appstore_list.id} names unknown offers: {', '.join(missing)}")
        return self


class CatalogChanges(BaseModel):
    """What importing a catalog file changes; shown by a dry run, applied otherwise."""

    model_config = ConfigDict(frozen=True)

    offers_added: list[str] = Field(default_factory=list)
    offers_changed: list[str] = Field(default_factory=list)
    offers_deactivated: list[str] = Field(default_factory=list)
    lists_added: list[str] = Field(default_factory=list)
    lists_changed: list[str] = Field(default_factory=list)
    lists_removed: list[str] = Field(default_factory=list)

    @property
    def nothing(self) -> bool:
        return not any(self.model_dump().values())


def plan_import(current: Catalog, incoming: Catalog, *, prune: bool) -> CatalogChanges:
    """Compare by id (and position); with ``prune``, what the file omits goes away.

    Offers are never deleted (purchases refer to them): pruning deactivates them.
    """
    current_offers = {offer.id: (index, offer) for index, offer in enumerate(current.offers)}
    current_lists = {item.id: (index, item) for index, item in enumerate(current.lists)}
    incoming_offer_ids = {offer.id for offer in incoming.offers}
    incoming_list_ids = {item.id for item in incoming.lists}
    return CatalogChanges(
        offers_added=[offer.id for offer in incoming.offers if offer.id not in current_offers],
        offers_changed=[
            offer.id
            for index, offer in enumerate(incoming.offers)
            if offer.id in current_offers and current_offers[offer.id] != (index, offer)
        ],
        offers_deactivated=sorted(
            offer.id
            for offer in current.offers
            if prune and offer.active and offer.id not in incoming_offer_ids
        ),
        lists_added=[item.id for item in incoming.lists if item.id not in current_lists],
        lists_changed=[
            item.id
            for index, item in enumerate(incoming.lists)
            if item.id in current_lists and current_lists[item.id] != (index, item)
        ],
        lists_removed=sorted(item.id for item in current.lists if prune and item.id not in incoming_list_ids),
    )
