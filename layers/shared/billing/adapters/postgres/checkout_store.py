"""Checkout wallets, their deposits and finalize replays in Postgres."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from billing.domain.checkout import DepositChange, DepositState, RecordedDeposit, Wallet, WalletStatus

_WALLET_COLUMNS = """id, offer_id, chain, chain_id, token, token_address, token_decimals, address, hd_index,
                     min_target_balance_nano, confirmations_required, status, expires_at, created_block,
                     last_scanned_block, purchase_id, customer"""


def _wallet(row: dict[str, Any]) -> Wallet:
    return Wallet(**{**row, "status": WalletStatus(row["status"])})


class PostgresCheckoutStore:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def next_hd_index(self) -> int:
        row = self._connection.execute("SELECT nextval('checkout_wallet_hd_index')").fetchone()
        assert row is not None
        return int(row[0])

    def insert_wallet(self, wallet: Wallet) -> None:
        self._connection.execute(
            f"""INSERT INTO checkout_wallets ({_WALLET_COLUMNS})
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                wallet.id,
                wallet.offer_id,
                wallet.chain,
                wallet.chain_id,
                wallet.token,
                wallet.token_address,
                wallet.token_decimals,
                wallet.address,
                wallet.hd_index,
                wallet.min_target_balance_nano,
                wallet.confirmations_required,
                wallet.status.value,
                wallet.expires_at,
                wallet.created_block,
                wallet.last_scanned_block,
                wallet.purchase_id,
                Jsonb(wallet.customer),
            ),
        )

    def _one_wallet(self, column: str, value: UUID, lock: bool) -> Wallet | None:
        locking = "FOR UPDATE" if lock else ""
        with self._connection.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(
                f"SELECT {_WALLET_COLUMNS} FROM checkout_wallets WHERE {column} = %s {locking}", (value,)
            ).fetchone()
        return _wallet(row) if row else None

    def wallet(self, wallet_id: UUID, *, lock: bool = False) -> Wallet | None:
        return self._one_wallet("id", wallet_id, lock)

    def wallet_of_purchase(self, purchase_id: UUID, *, lock: bool = False) -> Wallet | None:
        return self._one_wallet("purchase_id", purchase_id, lock)

    def wallets_with_purchases(self, chain_id: int, limit: int) -> list[Wallet]:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"""SELECT {_WALLET_COLUMNS} FROM checkout_wallets
                     WHERE chain_id = %s AND purchase_id IS NOT NULL
                     ORDER BY last_scanned_block NULLS FIRST, id LIMIT %s""",
                (chain_id, limit),
            ).fetchall()
        return [_wallet(row) for row in rows]

    def deposits(self, wallet_id: UUID) -> list[RecordedDeposit]:
        with self._connection.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                """SELECT tx_hash, log_index, block_number, block_hash, sender, amount_units, amount_nano,
                          state
                     FROM deposits WHERE wallet_id = %s ORDER BY block_number, log_index""",
                (wallet_id,),
            ).fetchall()
        return [
            RecordedDeposit(
                **{**row, "amount_units": int(row["amount_units"]), "state": DepositState(row["state"])}
            )
            for row in rows
        ]

    def swept_units(self, wallet_id: UUID) -> int:
        """Token units sent on to the offramp (submitted or confirmed sweeps)."""
        row = self._connection.execute(
            """SELECT coalesce(sum(amount_units), 0) FROM sweeps
                WHERE wallet_id = %s AND status IN ('submitted', 'confirmed')""",
            (wallet_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    def apply_deposit_changes(self, wallet: Wallet, changes: list[DepositChange]) -> None:
        for change in changes:
            deposit = change.deposit
            if change.is_new:
                self._connection.execute(
                    """INSERT INTO deposits (chain_id, tx_hash, log_index, wallet_id, token_address, sender,
                                             amount_units, amount_nano, block_number, block_hash, state,
                                             confirmed_at)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                               CASE WHEN %s = 'confirmed' THEN now() END)
                       ON CONFLICT (chain_id, tx_hash, log_index) DO NOTHING""",
                    (
                        wallet.chain_id,
                        deposit.tx_hash,
                        deposit.log_index,
                        wallet.id,
                        wallet.token_address,
                        deposit.sender,
                        deposit.amount_units,
                        deposit.amount_nano,
                        deposit.block_number,
                        deposit.block_hash,
                        deposit.state.value,
                        deposit.state.value,
                    ),
                )
            else:
                self._connection.execute(
                    """UPDATE deposits
                          SET block_number = %s, block_hash = %s, state = %s,
                              confirmed_at = CASE WHEN %s = 'confirmed' THEN coalesce(confirmed_at, now()) END
                        WHERE chain_id = %s AND tx_hash = %s AND log_index = %s AND state <> 'credited'""",
                    (
                        deposit.block_number,
                        deposit.block_hash,
                        deposit.state.value,
                        deposit.state.value,
                        wallet.chain_id,
                        deposit.tx_hash,
                        deposit.log_index,
                    ),
                )

    def mark_credited(
        self, chain_id: int, deposit: RecordedDeposit, purchase_id: UUID, ledger_entry_id: int
    ) -> None:
        self._connection.execute(
            """UPDATE deposits
                  SET state = 'credited', purchase_id = %s, ledger_entry_id = %s, credited_at = now()
                WHERE chain_id = %s AND tx_hash = %s AND log_index = %s""",
            (purchase_id, ledger_entry_id, chain_id, deposit.tx_hash, deposit.log_index),
        )

    def record_scan(self, wallet_id: UUID, head_block: int, status: WalletStatus) -> None:
        self._connection.execute(
            """UPDATE checkout_wallets
                  SET last_scanned_block = greatest(coalesce(last_scanned_block, 0), %s), status = %s,
                      updated_at = now()
                WHERE id = %s""",
            (head_block, status.value, wallet_id),
        )

    def attach_purchase(self, wallet_id: UUID, purchase_id: UUID) -> None:
        self._connection.execute(
            """UPDATE checkout_wallets SET purchase_id = %s, status = 'finalized', updated_at = now()
                WHERE id = %s AND purchase_id IS NULL""",
            (purchase_id, wallet_id),
        )

    def finalize_replay(self, wallet_id: UUID, idempotency_key: str) -> tuple[str, bytes] | None:
        row = self._connection.execute(
            """SELECT request_fingerprint, response_ciphertext FROM finalize_replays
                WHERE wallet_id = %s AND idempotency_key = %s""",
            (wallet_id, idempotency_key),
        ).fetchone()
        return (str(row[0]), bytes(row[1])) if row else None

    def store_finalize_replay(
        self, wallet_id: UUID, idempotency_key: str, fingerprint: str, ciphertext: bytes
    ) -> None:
        self._connection.execute(
            """INSERT INTO finalize_replays
                   (wallet_id, idempotency_key, request_fingerprint, response_ciphertext)
               VALUES (%s, %s, %s, %s)""",
            (wallet_id, idempotency_key, fingerprint, ciphertext),
        )
