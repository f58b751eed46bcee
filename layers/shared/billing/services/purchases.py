"""Reading a purchase with its customer key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from uuid import UUID

from billing.domain.api_keys import KeyRole, api_key_matches
from billing.domain.errors import SAME_FOR_EVERY_AUTH_FAILURE, NotFound, Unauthorized
from billing.domain.purchase import PurchaseView
from billing.services.ports import Transactions, UnitOfWork
from billing.services.provisioning import ProvisioningHandoff


def parse_purchase_id(raw: str) -> UUID | None:
    try:
        return UUID(raw)
    except ValueError:
        return None


def authenticate_in(unit: UnitOfWork, raw_purchase_id: str, presented_key: str, role: KeyRole) -> UUID:
    """The purchase id if ``presented_key`` is its ``role`` key; the same 401 otherwise.

    A malformed id, an unknown purchase and a wrong key are indistinguishable,
    and each still hashes and compares the key once.
    """
    purchase_id = parse_purchase_id(raw_purchase_id)
    credentials = unit.purchases.credentials(purchase_id) if purchase_id else None
    stored = None
    if credentials is not None:
        stored = credentials.customer_key_hash if role is KeyRole.CUSTOMER else credentials.vendor_key_hash
    if not api_key_matches(presented_key, stored) or purchase_id is None:
        raise Unauthorized(SAME_FOR_EVERY_AUTH_FAILURE)
    return purchase_id


@dataclass(frozen=True)
class PurchaseDetails:
    """The customer's view with its resource as it is now, and the resource's credentials when
    this read is the one that hands them out (once; docs/provisioning.md)."""

    view: PurchaseView
    resource_credentials: dict[str, str] | None = None


class PurchaseReader:
    def __init__(self, transactions: Transactions, resources: ProvisioningHandoff | None = None) -> None:
        self._transactions = transactions
        self._resources = resources

    def details_for_customer(self, raw_purchase_id: str, customer_key: str) -> PurchaseDetails:
        view = self.view_for_customer(raw_purchase_id, customer_key)
        if self._resources is None:
            return PurchaseDetails(view)
        delivery = self._resources.deliver(view.id)
        if delivery.resource is None:
            return PurchaseDetails(view)
        return PurchaseDetails(replace(view, resource=delivery.resource), delivery.credentials)

    def view_for_customer(self, raw_purchase_id: str, customer_key: str) -> PurchaseView:
        def read(unit: UnitOfWork) -> PurchaseView:
            purchase_id = authenticate_in(unit, raw_purchase_id, customer_key, KeyRole.CUSTOMER)
            view = unit.purchases.view(purchase_id)
            if view is None:  # deleted between the two reads
                raise NotFound("purchase not found")
            return view

        return self._transactions.run(read)
