"""Bodies and query parsing of the public catalog routes (/appstore/…, /offer/…)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import Field, StringConstraints

from billing.api.models import ResponseModel
from billing.domain.catalog import AppstoreList, Offer, OfferKind, Pricing
from billing.domain.chains import chain_registry
from billing.domain.money import UsdAmount
from billing.domain.suggest import CustomerContext, Suggestion, WeightedLanguage, parse_accept_language

COUNTRY_PATTERN = r"^[A-Za-z]{2}$"
KEYBOARD_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$"
#: One Accept-Language entry: a language range with an optional q-value.
LanguageRange = Annotated[
    str, StringConstraints(pattern=r"^\s*[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*(\s*;\s*q=[01](\.\d{0,3})?)?\s*$")
]
Wish = Annotated[str, StringConstraints(max_length=60)]
MAX_PREFERENCES = 10


def customer_context(
    *,
    country: str | None,
    language: str | None,
    keyboard: str | None,
    profession: str | None,
    preferences: str | None,
    headers: Mapping[str, str],
) -> CustomerContext:
    """Query parameters win over what the CDN and the browser say in headers.

    Headers are taken forgivingly: a malformed ``cloudfront-viewer-country`` or
    ``accept-language`` is ignored, never an error.
    """
    viewer_country = (headers.get("cloudfront-viewer-country") or "").strip()
    chosen_country = country or (viewer_country if re.fullmatch(COUNTRY_PATTERN, viewer_country) else None)
    languages = parse_accept_language(language if language else headers.get("accept-language"))
    wishes = [wish.strip() for wish in (preferences or "").split(",") if wish.strip()][:MAX_PREFERENCES]
    return CustomerContext(
        country=chosen_country.upper() if chosen_country else None,
        languages=languages,
        keyboard=keyboard.lower() if keyboard else None,
        profession=profession.strip().lower() if profession and profession.strip() else None,
        preferences=tuple(wishes),
    )


class InterpretedContext(ResponseModel):
    """What the ranking understood of the request (so a surprising ranking can be explained)."""

    country: str | None
    languages: list[str]
    keyboard: str | None
    profession: str | None
    preferences: list[str]

    @classmethod
    def of(cls, context: CustomerContext) -> InterpretedContext:
        def label(language: WeightedLanguage) -> str:
            return f"{language.tag};q={language.q / 1000:g}"

        return cls(
            country=context.country,
            languages=[label(language) for language in context.languages],
            keyboard=context.keyboard,
            profession=context.profession,
            preferences=list(context.preferences),
        )


class SuggestedList(ResponseModel):
    list_id: str
    title: str
    url: str
    reason: str = Field(description="Why this list is suggested, in one sentence")
    reasons: list[str]
    score: int


class SuggestResponse(ResponseModel):
    lists: list[SuggestedList]
    context: InterpretedContext

    @classmethod
    def of(cls, suggestions: list[Suggestion], context: CustomerContext, base_url: str) -> SuggestResponse:
        return cls(
            lists=[
                SuggestedList(
                    list_id=suggestion.appstore_list.id,
                    title=suggestion.appstore_list.title,
                    url=f"{base_url}/appstore/list/{suggestion.appstore_list.id}",
                    reason="; ".join(suggestion.reasons).capitalize(),
                    reasons=list(suggestion.reasons),
                    score=suggestion.score,
                )
                for suggestion in suggestions
            ],
            context=InterpretedContext.of(context),
        )


class OfferSummary(ResponseModel):
    offer_id: str
    sku: str
    kind: OfferKind
    title: str
    description: str
    min_deposit: UsdAmount
    url: str


class AppstoreListResponse(ResponseModel):
    list_id: str
    title: str
    description: str
    offers: list[OfferSummary]

    @classmethod
    def of(cls, appstore_list: AppstoreList, offers: list[Offer], base_url: str) -> AppstoreListResponse:
        # Built from already validated catalog data: amounts are nano-USD ints here.
        return cls.model_construct(
            list_id=appstore_list.id,
            title=appstore_list.title,
            description=appstore_list.description,
            offers=[
                OfferSummary.model_construct(
                    offer_id=offer.id,
                    sku=offer.sku,
                    kind=offer.kind,
                    title=offer.title,
                    description=offer.description,
                    min_deposit=offer.min_deposit,
                    url=f"{base_url}/offer/{offer.id}",
                )
                for offer in offers
            ],
        )


class PaymentOptionView(ResponseModel):
    chain: str
    chain_id: int
    token: str
    token_address: str
    decimals: int
    confirmations: int


class TriggersView(ResponseModel):
    low: UsdAmount
    critical: UsdAmount
    termination: UsdAmount
    grace_period_hours: int


class PublicOffer(ResponseModel):
    """The offer as customers see it: never suggest tags, activity flags or other internals."""

    offer_id: str
    sku: str
    kind: OfferKind
    title: str
    description: str
    pricing: Pricing
    min_deposit: UsdAmount
    payment_options: list[PaymentOptionView]
    default_triggers: TriggersView

    @classmethod
    def of(cls, offer: Offer) -> PublicOffer:
        registry = chain_registry()
        options = []
        for option in offer.payment_options:
            chain = registry.chain(option.chain)
            contract = chain.tokens[option.token]
            options.append(
                PaymentOptionView(
                    chain=chain.slug,
                    chain_id=chain.chain_id,
                    token=option.token,
                    token_address=contract.address,
                    decimals=contract.decimals,
                    confirmations=chain.confirmations,
                )
            )
        triggers = offer.default_triggers
        return cls.model_construct(
            offer_id=offer.id,
            sku=offer.sku,
            kind=offer.kind,
            title=offer.title,
            description=offer.description,
            pricing=offer.pricing,
            min_deposit=offer.min_deposit,
            payment_options=options,
            default_triggers=TriggersView.model_construct(
                low=triggers.low,
                critical=triggers.critical,
                termination=triggers.termination,
                grace_period_hours=triggers.grace_period_hours,
            ),
        )
