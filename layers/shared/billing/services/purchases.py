"""Reading a purchase with its customer key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from uuid import UUID

from billing.domain.api_keys import KeyRole, api_key_matches
from billing.domain.errors import SAME_FOR_EVERY_AUTH_FAILURE, Unauthorized
from billing.domain.purchase import PurchaseCredentials, PurchaseView
from billing.services.ports import Transactions, UnitOfWork

if TYPE_CHECKING:  # meter-usage and authorize import this module: keep provisioning out of their cold start
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
    _check_key(presented_key, credentials, role)
    assert purchase_id is not None  # no credentials without a purchase
    return purchase_id


def authenticated_view(
    unit: UnitOfWork, raw_purchase_id: str, presented_key: str, role: KeyRole
) -> PurchaseView:
    """The purchase as ``PurchaseStore.view`` reads it, if ``presented_key`` is its ``role`` key.

    As :func:`authenticate_in`, in the same single read as the view (the key hashes ride along).
    """
    purchase_id = parse_purchase_id(raw_purchase_id)
    found = unit.purchases.view_with_credentials(purchase_id) if purchase_id else None
    _check_key(presented_key, found[1] if found else None, role)
    assert found is not None  # no credentials without a purchase
    return found[0]


def _check_key(presented_key: str, credentials: PurchaseCredentials | None, role: KeyRole) -> None:
    """One hash-and-compare whether or not the purchase exists; the same 401 for every failure."""
    stored = None
    if credentials is not None:
        stored = credentials.customer_key_hash if role is KeyRole.CUSTOMER else credentials.vendor_key_hash
    if not api_key_matches(presented_key, stored) or credentials is None:
        raise Unauthorized(SAME_FOR_EVERY_AUTH_FAILURE)


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
        return self._transactions.run(
            lambda unit: authenticated_view(unit, raw_purchase_id, customer_key, KeyRole.CUSTOMER)
        )
