"""Sweeps in Postgres: claiming a wallet+token slot, and recording what happened on chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from billing.adapters.postgres.transactions import PostgresTransactions, PostgresUnitOfWork
from billing.domain.sweeping import Sweep, SweepMethod, SweepStatus, SweepTarget

T = TypeVar("T")

_SWEEP_COLUMNS = """id, wallet_id, chain_id, token_address, from_address, to_address, method, amount_units,
                    authorization_nonce, status, topup_tx_hash, tx_hash, gas_spent_wei, error"""


def _sweep(row: dict[str, Any]) -> Sweep:
    nonce = row["authorization_nonce"]
    return Sweep(
        **{
            **row,
            "method": SweepMethod(row["method"]),
            "status": SweepStatus(row["status"]),
            "amount_units": int(row["amount_units"]),
            "gas_spent_wei": int(row["gas_spent_wei"]),
            "authorization_nonce": None if nonce is None else bytes(nonce),
        }
    )


class PostgresSweepStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def targets(self, chain_id: int, limit: int) -> list[SweepTarget]:
        """Wallets with a purchase on ``chain_id`` and no open sweep, least recently swept first."""
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                """SELECT w.id AS wallet_id, w.chain_id, w.hd_index, w.address, w.token, w.token_address,
                          w.token_decimals
                     FROM checkout_wallets w
                    WHERE w.chain_id = %s AND w.purchase_id IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM sweeps s
                                       WHERE s.wallet_id = w.id AND s.token_address = w.token_address
                                         AND s.status IN ('pending', 'submitted'))
                    ORDER BY (SELECT max(s.created_at) FROM sweeps s WHERE s.wallet_id = w.id) NULLS FIRST,
                             w.id
                    LIMIT %s""",
                (chain_id, limit),
            ).fetchall()
        return [SweepTarget(**row) for row in rows]

    def claim(self, sweep: Sweep) -> bool:
        """Record ``sweep`` as pending; ``False`` if the wallet+token already has an open sweep."""
        row = self._connection.execute(
            """INSERT INTO sweeps (id, wallet_id, chain_id, token_address, from_address, to_address, method,
                                   amount_units, authorization_nonce, status)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending')
               ON CONFLICT (wallet_id, token_address) WHERE status IN ('pending', 'submitted') DO NOTHING
               RETURNING id""",
            (
                sweep.id,
                sweep.wallet_id,
                sweep.chain_id,
                sweep.token_address,
                sweep.from_address,
                sweep.to_address,
                sweep.method.value,
                sweep.amount_units,
                sweep.authorization_nonce,
            ),
        ).fetchone()
        return row is not None

    def release(self, sweep_id: UUID) -> None:
        """Drop a claim before anything was sent (the balance was gone when re-checked)."""
        self._connection.execute(
            "DELETE FROM sweeps WHERE id = %s AND status = 'pending' AND topup_tx_hash IS NULL", (sweep_id,)
        )

    def record_topup(self, sweep_id: UUID, topup_tx_hash: str, topup_wei: int, gas_spent_wei: int) -> None:
        self._connection.execute(
            """UPDATE sweeps SET topup_tx_hash = %s, topup_wei = %s, gas_spent_wei = %s, updated_at = now()
                WHERE id = %s""",
            (topup_tx_hash, topup_wei, gas_spent_wei, sweep_id),
        )

    def mark_submitted(self, sweep_id: UUID, tx_hash: str) -> None:
        self._connection.execute(
            """UPDATE sweeps SET status = 'submitted', tx_hash = %s, updated_at = now()
                WHERE id = %s AND status = 'pending'""",
            (tx_hash, sweep_id),
        )

    def mark_confirmed(self, sweep_id: UUID, gas_spent_wei: int) -> None:
        self._connection.execute(
            """UPDATE sweeps SET status = 'confirmed', gas_spent_wei = %s, error = NULL, updated_at = now()
                WHERE id = %s AND status IN ('pending', 'submitted')""",
            (gas_spent_wei, sweep_id),
        )

    def mark_failed(self, sweep_id: UUID, error: str, gas_spent_wei: int) -> None:
        self._connection.execute(
            """UPDATE sweeps SET status = 'failed', error = %s, gas_spent_wei = %s, updated_at = now()
                WHERE id = %s AND status IN ('pending', 'submitted')""",
            (error[:500], gas_spent_wei, sweep_id),
        )

    def fail_abandoned(self, chain_id: int, pending_after_s: int, submitted_after_s: int) -> int:
        """Free slots held too long: a run that died between claim and send, or a dropped transaction.

        Funds can only ever go to the recorded offramp, so a late-mined one is never lost; the
        next sweep re-reads the balance before sending anything.
        """
        cursor = self._connection.execute(
            """UPDATE sweeps SET status = 'failed', updated_at = now(),
                      error = CASE status WHEN 'pending' THEN 'abandoned before sending'
                                          ELSE 'no receipt in time (dropped?)' END
                WHERE chain_id = %s
                  AND ((status = 'pending' AND updated_at < now() - make_interval(secs => %s))
                    OR (status = 'submitted' AND updated_at < now() - make_interval(secs => %s)))""",
            (chain_id, pending_after_s, submitted_after_s),
        )
        return cursor.rowcount

    def submitted(self, chain_id: int, limit: int) -> list[Sweep]:
        """Sweeps sent by an earlier run that did not see their receipt (to confirm now)."""
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"""SELECT {_SWEEP_COLUMNS} FROM sweeps
                     WHERE chain_id = %s AND status = 'submitted' ORDER BY created_at LIMIT %s""",
                (chain_id, limit),
            ).fetchall()
        return [_sweep(row) for row in rows]

    def sweeps_of_wallet(self, wallet_id: UUID) -> list[Sweep]:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE wallet_id = %s ORDER BY created_at, id",
                (wallet_id,),
            ).fetchall()
        return [_sweep(row) for row in rows]


class PostgresSweepUnit:
    """The sweep store of one transaction."""

    def __init__(self, unit: PostgresUnitOfWork) -> None:
        self.sweeps = PostgresSweepStore(unit.connection)


class PostgresSweepTransactions:
    """Units of work for the sweeper, on the same retrying transactions as everything else."""

    def __init__(self, transactions: PostgresTransactions) -> None:
        self._transactions = transactions

    def run(self, work: Callable[[PostgresSweepUnit], T]) -> T:
        return self._transactions.run(lambda unit: work(PostgresSweepUnit(unit)))
