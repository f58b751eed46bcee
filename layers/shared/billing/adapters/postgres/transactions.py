"""Units of work on Postgres: one explicit transaction, retried on benign races."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from aws_lambda_powertools import Logger

from billing.adapters.postgres.connection import forget_connection, shared_connection
from billing.adapters.postgres.ledger_store import DuplicateIdempotencyKey, PostgresLedgerStore
from billing.adapters.postgres.purchase_store import PostgresPurchaseStore
from billing.adapters.postgres.usage_store import PostgresUsageStore
from billing.domain.errors import DependencyUnavailable

if TYPE_CHECKING:
    from billing.adapters.postgres.catalog_store import PostgresCatalogStore
    from billing.adapters.postgres.checkout_store import PostgresCheckoutStore
    from billing.adapters.postgres.cost_export_store import PostgresCostExportStore
    from billing.adapters.postgres.history_store import PostgresHistoryStore
    from billing.adapters.postgres.provisioning_store import PostgresProvisioningStore
    from billing.adapters.postgres.usage_estimate_store import PostgresUsageEstimateStore

T = TypeVar("T")
logger = Logger(child=True)

_RETRYABLE = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    DuplicateIdempotencyKey,
)


class PostgresUnitOfWork:
    """The stores of one transaction, all on the same connection.

    The stores every request path needs are built at once; the others (and their modules) only
    when a unit of work first asks for them, which keeps them out of every cold start that does
    not (bench/cold_start.py).
    """

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection
        self.ledger = PostgresLedgerStore(connection)
        self.purchases = PostgresPurchaseStore(connection)
        self.usage = PostgresUsageStore(connection)

    @cached_property
    def catalog(self) -> PostgresCatalogStore:
        from billing.adapters.postgres.catalog_store import PostgresCatalogStore  # noqa: PLC0415

        return PostgresCatalogStore(self.connection)

    @cached_property
    def checkout(self) -> PostgresCheckoutStore:
        from billing.adapters.postgres.checkout_store import PostgresCheckoutStore  # noqa: PLC0415

        return PostgresCheckoutStore(self.connection)

    @cached_property
    def history(self) -> PostgresHistoryStore:
        from billing.adapters.postgres.history_store import PostgresHistoryStore  # noqa: PLC0415

        return PostgresHistoryStore(self.connection)

    @cached_property
    def cost_export(self) -> PostgresCostExportStore:
        from billing.adapters.postgres.cost_export_store import PostgresCostExportStore  # noqa: PLC0415

        return PostgresCostExportStore(self.connection)

    @cached_property
    def provisioning(self) -> PostgresProvisioningStore:
        from billing.adapters.postgres.provisioning_store import PostgresProvisioningStore  # noqa: PLC0415

        return PostgresProvisioningStore(self.connection)

    @cached_property
    def usage_estimates(self) -> PostgresUsageEstimateStore:
        from billing.adapters.postgres.usage_estimate_store import PostgresUsageEstimateStore  # noqa: PLC0415

        return PostgresUsageEstimateStore(self.connection)


class PostgresTransactions:
    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]] = shared_connection,
        *,
        attempts: int = 4,
    ) -> None:
        self._connect = connect
        self._attempts = attempts

    def run(self, work: Callable[[PostgresUnitOfWork], T]) -> T:
        """Run ``work`` in one transaction; a race or a stale connection retries it whole.

        Retrying is safe because nothing commits before ``work`` returns and
        every ledger write is idempotent on its key.
        """
        return self._attempt(work, in_transaction=True)

    def run_single_write(self, work: Callable[[PostgresUnitOfWork], T]) -> T:
        """Run ``work`` whose only write is one statement: each statement commits on its own.

        One statement is atomic by itself, so the explicit BEGIN/COMMIT round
        trips are saved; reads after the write see it committed.
        """
        return self._attempt(work, in_transaction=False)

    def _attempt(self, work: Callable[[PostgresUnitOfWork], T], *, in_transaction: bool) -> T:
        stale_connection_retried = False
        attempt = 0
        while True:
            attempt += 1
            try:
                connection = self._connect()
                if not in_transaction:
                    return work(PostgresUnitOfWork(connection))
                with connection.transaction():
                    return work(PostgresUnitOfWork(connection))
            except _RETRYABLE as exc:
                if attempt >= self._attempts:
                    raise DependencyUnavailable("the database stayed busy; retry the request") from exc
                logger.info("retrying transaction after a race", extra={"reason": type(exc).__name__})
            except psycopg.errors.QueryCanceled as exc:
                raise DependencyUnavailable(
                    "the database did not answer in time; nothing was written"
                ) from exc
            except psycopg.OperationalError as exc:
                forget_connection()
                if stale_connection_retried:
                    raise DependencyUnavailable("the database is unavailable; nothing was written") from exc
                stale_connection_retried = True
                logger.warning("database connection lost; reconnecting once", extra={"error": str(exc)})
