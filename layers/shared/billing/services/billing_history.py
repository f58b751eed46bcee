"""Historical billing: a purchase's ledger summed per time bucket, read with its customer key.

The money figures come from the ledger by the time each entry was recorded, so
the report's totals are the ledger's sums over the same range, to the nano-USD.
"""

from __future__ import annotations

from billing.domain.api_keys import KeyRole
from billing.domain.billing_history import BillingPeriod, BillingReport, build_report
from billing.services.ports import Transactions, UnitOfWork
from billing.services.purchases import authenticate_in


class BillingHistoryService:
    def __init__(self, transactions: Transactions) -> None:
        self._transactions = transactions

    def report(
        self, raw_purchase_id: str, customer_key: str, period: BillingPeriod, *, by_meter: bool
    ) -> BillingReport:
        """The report for ``period``; the same 401 for an unknown purchase and a wrong key."""

        def read(unit: UnitOfWork) -> BillingReport:
            purchase_id = authenticate_in(unit, raw_purchase_id, customer_key, KeyRole.CUSTOMER)
            history = unit.history.ledger_history(purchase_id, period, by_meter=by_meter)
            return build_report(purchase_id, period, history, by_meter=by_meter)

        return self._transactions.run(read)
