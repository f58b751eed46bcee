"""Offers and app-store lists in Postgres, read back through the catalog models."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from billing.domain.catalog import AppstoreList, Catalog, Offer
from billing.domain.money import format_usd

_OFFER_COLUMNS = """id, sku, kind, title, description, pricing, min_deposit_nano, payment_options,
                    default_triggers, suggest_tags, active"""
_LIST_COLUMNS = "id, title, description, offer_ids, suggest_tags, priority"


def _offer(row: dict[str, Any]) -> Offer:
    document = {key: value for key, value in row.items() if key != "min_deposit_nano"}
    document["min_deposit"] = format_usd(row["min_deposit_nano"])
    return Offer.model_validate(document)


def _appstore_list(row: dict[str, Any]) -> AppstoreList:
    return AppstoreList.model_validate(row)


class PostgresCatalogStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def _offers(self, where: str = "", params: tuple[Any, ...] = ()) -> list[Offer]:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"SELECT {_OFFER_COLUMNS} FROM offers {where} ORDER BY position, id", params
            ).fetchall()
        return [_offer(row) for row in rows]

    def offer(self, offer_id: str) -> Offer | None:
        found = self._offers("WHERE id = %s", (offer_id,))
        return found[0] if found else None

    def active_offers(self) -> dict[str, Offer]:
        return {offer.id: offer for offer in self._offers("WHERE active")}

    def lists(self) -> list[AppstoreList]:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"SELECT {_LIST_COLUMNS} FROM appstore_lists ORDER BY position, id"
            ).fetchall()
        return [_appstore_list(row) for row in rows]

    def appstore_list(self, list_id: str) -> AppstoreList | None:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(
                f"SELECT {_LIST_COLUMNS} FROM appstore_lists WHERE id = %s", (list_id,)
            ).fetchone()
        return _appstore_list(row) if row else None

    def export(self) -> Catalog:
        return Catalog(offers=self._offers(), lists=self.lists())

    def upsert_offer(self, offer: Offer, position: int) -> None:
        document = offer.model_dump(mode="json")
        self._connection.execute(
            """INSERT INTO offers (id, sku, kind, title, description, pricing, min_deposit_nano,
                                   payment_options, default_triggers, suggest_tags, active, position)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET
                   sku = EXCLUDED.sku, kind = EXCLUDED.kind, title = EXCLUDED.title,
                   description = EXCLUDED.description, pricing = EXCLUDED.pricing,
                   min_deposit_nano = EXCLUDED.min_deposit_nano, payment_options = EXCLUDED.payment_options,
                   default_triggers = EXCLUDED.default_triggers, suggest_tags = EXCLUDED.suggest_tags,
                   active = EXCLUDED.active, position = EXCLUDED.position, updated_at = now()""",
            (
                offer.id,
                offer.sku,
                offer.kind.value,
                offer.title,
                offer.description,
                Jsonb(document["pricing"]),
                offer.min_deposit,
                Jsonb(document["payment_options"]),
                Jsonb(document["default_triggers"]),
                Jsonb(document["suggest_tags"]),
                offer.active,
                position,
            ),
        )

    def upsert_list(self, appstore_list: AppstoreList, position: int) -> None:
        self._connection.execute(
            """INSERT INTO appstore_lists
                   (id, title, description, offer_ids, suggest_tags, priority, position)
               VALUES (%s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET
                   title = EXCLUDED.title, description = EXCLUDED.description,
                   offer_ids = EXCLUDED.offer_ids,
                   suggest_tags = EXCLUDED.suggest_tags, priority = EXCLUDED.priority,
                   position = EXCLUDED.position, updated_at = now()""",
            (
                appstore_list.id,
                appstore_list.title,
                appstore_list.description,
                appstore_list.offer_ids,
                Jsonb(appstore_list.suggest_tags.model_dump(mode="json")),
                appstore_list.priority,
                position,
            ),
        )

    def deactivate_offers_except(self, offer_ids: list[str]) -> list[str]:
        rows = self._connection.execute(
            """UPDATE offers SET active = false, updated_at = now()
                WHERE active AND id <> ALL(%s) RETURNING id""",
            (offer_ids,),
        ).fetchall()
        return sorted(str(row[0]) for row in rows)

    def delete_lists_except(self, list_ids: list[str]) -> list[str]:
        rows = self._connection.execute(
            "DELETE FROM appstore_lists WHERE id <> ALL(%s) RETURNING id", (list_ids,)
        ).fetchall()
        return sorted(str(row[0]) for row in rows)
