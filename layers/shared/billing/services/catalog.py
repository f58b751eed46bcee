"""Reading the catalog for the app store, and importing catalog files for the operator."""

from __future__ import annotations

from billing.domain.catalog import AppstoreList, Catalog, CatalogChanges, Offer, plan_import
from billing.domain.errors import NotFound
from billing.domain.suggest import CustomerContext, Suggestion, rank_lists
from billing.services.ports import Transactions, UnitOfWork


class CatalogReader:
    def __init__(self, transactions: Transactions) -> None:
        self._transactions = transactions

    def public_offer(self, offer_id: str) -> Offer:
        offer = self._transactions.run(lambda unit: unit.catalog.offer(offer_id))
        if offer is None or not offer.active:
            raise NotFound(f"no offer {offer_id!r}")
        return offer

    def appstore_list(self, list_id: str) -> tuple[AppstoreList, list[Offer]]:
        """The list and its active offers, in the list's order."""

        def read(unit: UnitOfWork) -> tuple[AppstoreList | None, dict[str, Offer]]:
            return unit.catalog.appstore_list(list_id), unit.catalog.active_offers()

        appstore_list, active = self._transactions.run(read)
        offers = (
            [active[offer_id] for offer_id in appstore_list.offer_ids if offer_id in active]
            if appstore_list
            else []
        )
        if appstore_list is None or not offers:
            raise NotFound(f"no app-store list {list_id!r} with available offers")
        return appstore_list, offers

    def suggest(self, context: CustomerContext) -> list[Suggestion]:
        def read(unit: UnitOfWork) -> tuple[list[AppstoreList], dict[str, Offer]]:
            return unit.catalog.lists(), unit.catalog.active_offers()

        lists, active = self._transactions.run(read)
        return rank_lists(context, lists, active)


class CatalogImporter:
    def __init__(self, transactions: Transactions) -> None:
        self._transactions = transactions

    def export(self) -> Catalog:
        return self._transactions.run(lambda unit: unit.catalog.export())

    def import_catalog(self, incoming: Catalog, *, prune: bool, dry_run: bool) -> CatalogChanges:
        """Apply a validated catalog file atomically (or only report what would change)."""

        def apply(unit: UnitOfWork) -> CatalogChanges:
            changes = plan_import(unit.catalog.export(), incoming, prune=prune)
            if dry_run:
                return changes
            for position, offer in enumerate(incoming.offers):
                unit.catalog.upsert_offer(offer, position)
            for position, appstore_list in enumerate(incoming.lists):
                unit.catalog.upsert_list(appstore_list, position)
            if prune:
                unit.catalog.deactivate_offers_except([offer.id for offer in incoming.offers])
                unit.catalog.delete_lists_except([item.id for item in incoming.lists])
            return changes

        return self._transactions.run(apply)
