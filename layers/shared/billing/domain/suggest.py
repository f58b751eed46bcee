"""Ranking app-store lists for a customer's context: deterministic, and each result says why.

Scores are integers. Each signal adds fixed points when it matches a list's
tags (its own, or its offers' where the list has none for that signal); a
list in a language the customer did not ask for loses the language points.
The vendor's ``priority`` is added last, so with no usable context the
configured order wins. Ties fall back to priority, then to the catalog order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from billing.domain.catalog import AppstoreList, Offer, SuggestTags

COUNTRY_POINTS = 30
LANGUAGE_POINTS = 20  # scaled by the language's q-value
KEYBOARD_POINTS = 10
PROFESSION_POINTS = 25
PREFERENCE_POINTS = 10
MAX_PREFERENCE_MATCHES = 3
MAX_LANGUAGES = 12

_LANGUAGE_RANGE = re.compile(r"^[a-z]{1,8}(-[a-z0-9]{1,8})*$")
_Q_VALUE = re.compile(r"^(0(\.\d{0,3})?|1(\.0{0,3})?)$")
_WORD = re.compile(r"[a-z0-9+#]+")


@dataclass(frozen=True)
class WeightedLanguage:
    tag: str  # lower case, e.g. "de-de"
    q: int  # q-value in thousandths: 1000 = q=1

    @property
    def primary(self) -> str:
        return self.tag.split("-", 1)[0]


@dataclass(frozen=True)
class CustomerContext:
    country: str | None = None
    languages: tuple[WeightedLanguage, ...] = ()
    keyboard: str | None = None
    profession: str | None = None
    preferences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suggestion:
    appstore_list: AppstoreList
    score: int
    reasons: tuple[str, ...]


def _q_thousandths(value: str) -> int:
    """``"0.9"`` → 900 exactly; anything that is not a valid q-value → -1 (entry ignored)."""
    if not _Q_VALUE.fullmatch(value):
        return -1
    whole, _, fraction = value.partition(".")
    return int(whole) * 1000 + int((fraction + "000")[:3])


def parse_accept_language(header: str | None) -> tuple[WeightedLanguage, ...]:
    """RFC 9110 ``Accept-Language``, forgiving: malformed entries are skipped, never an error."""
    if not header:
        return ()
    weighted: dict[str, int] = {}
    for entry in header[:1_000].split(","):
        tag, *parameters = (part.strip() for part in entry.split(";"))
        tag = tag.lower()
        if tag == "*" or not _LANGUAGE_RANGE.fullmatch(tag):
            continue
        q = 1000
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = _q_thousandths(value)
        if q > 0 and q > weighted.get(tag, 0):
            weighted[tag] = q
    ranked = sorted(weighted.items(), key=lambda item: (-item[1], list(weighted).index(item[0])))
    return tuple(WeightedLanguage(tag, q) for tag, q in ranked[:MAX_LANGUAGES])


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _tag_in(tag: str, said: frozenset[str]) -> bool:
    """A (possibly multi-word) tag matches when every word of it was said."""
    tag_words = words(tag)
    return bool(tag_words) and tag_words <= said


def effective_tags(appstore_list: AppstoreList, offers: Mapping[str, Offer]) -> SuggestTags:
    """Per dimension, the list's own tags; where the list says nothing, those of its active offers.

    A list's own targeting is deliberate, so its offers' broader tags never dilute it.
    """
    offer_tags = [offers[offer_id].suggest_tags for offer_id in appstore_list.offer_ids if offer_id in offers]

    def union(field: str) -> list[str]:
        own: list[str] = getattr(appstore_list.suggest_tags, field)
        if own:
            return own
        seen: dict[str, None] = {}
        for tags in offer_tags:
            seen.update(dict.fromkeys(getattr(tags, field)))
        return list(seen)

    return SuggestTags(
        countries=union("countries"),
        languages=union("languages"),
        keyboards=union("keyboards"),
        professions=union("professions"),
        keywords=union("keywords"),
    )


def _score(context: CustomerContext, tags: SuggestTags) -> tuple[int, list[str]]:
    score, reasons = 0, []
    if context.country and context.country in tags.countries:
        score += COUNTRY_POINTS
        reasons.append(f"available for your country ({context.country})")
    listed = {tag.split("-", 1)[0] for tag in tags.languages}
    best = max(
        (language for language in context.languages if language.primary in listed),
        key=lambda x: x.q,
        default=None,
    )
    if best is not None:
        score += LANGUAGE_POINTS * best.q // 1000
        reasons.append(f"in your language ({best.primary}, q={best.q / 1000:g})")
    elif listed and context.languages:
        score -= LANGUAGE_POINTS
        reasons.append(f"in another language ({', '.join(sorted(listed))})")
    if context.keyboard and (
        context.keyboard in tags.keyboards or context.keyboard.split("-", 1)[0] in tags.keyboards
    ):
        score += KEYBOARD_POINTS
        reasons.append(f"suits your keyboard layout ({context.keyboard})")
    if context.profession:
        said = words(context.profession)
        matched = [profession for profession in tags.professions if _tag_in(profession, said)]
        if matched:
            score += PROFESSION_POINTS
            reasons.append(f"made for {matched[0]}s")
    said_preferences = frozenset().union(*(words(preference) for preference in context.preferences))
    liked = [keyword for keyword in tags.keywords if _tag_in(keyword, said_preferences)][
        :MAX_PREFERENCE_MATCHES
    ]
    if liked:
        score += PREFERENCE_POINTS * len(liked)
        reasons.append("matches what you asked for: " + ", ".join(liked))
    return score, reasons


def rank_lists(
    context: CustomerContext, lists: Sequence[AppstoreList], offers: Mapping[str, Offer]
) -> list[Suggestion]:
    """Lists that have at least one active offer, best first; ``offers`` holds the active ones."""
    ranked = []
    for position, appstore_list in enumerate(lists):
        if not any(offer_id in offers for offer_id in appstore_list.offer_ids):
            continue
        score, reasons = _score(context, effective_tags(appstore_list, offers))
        if not reasons:
            reasons = ["recommended by the vendor"]
        suggestion = Suggestion(appstore_list, score + appstore_list.priority, tuple(reasons))
        ranked.append((-suggestion.score, -appstore_list.priority, position, suggestion))
    return [entry[-1] for entry in sorted(ranked, key=lambda entry: entry[:3])]
