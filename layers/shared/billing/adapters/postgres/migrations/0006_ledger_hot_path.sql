-- The idempotency probe of every ledger write must use the unique (purchase_id, idempotency_key)
-- index. A second index leading with purchase_id, (purchase_id, at), let the planner pick it when
-- statistics lag and filter every entry of the purchase: O(history) per write (docs/benchmarks.md).
-- Time-range reads per purchase use usage_events (partitioned by time) or the entry ids instead.
DROP INDEX ledger_entries_purchase_at;

-- Credits, debits and adjustments as one PL/pgSQL call: the same single statement as before
-- (conditional UPDATE of the purchase + INSERT of its entry), but planned once per session
-- instead of on every call. No protocol-level prepared statement, so RDS Proxy stays unpinned.
CREATE FUNCTION ledger_apply_balance_change(
    p_purchase_id uuid, p_kind text, p_amount bigint, p_required bigint, p_key text,
    p_fingerprint text, p_source text, p_meter text, p_quantity numeric, p_unit text, p_metadata jsonb
)
RETURNS TABLE (entry_id bigint, balance_after bigint, held_after bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH updated AS (
        UPDATE purchases
           SET balance_nano = balance_nano + p_amount, updated_at = now()
         WHERE id = p_purchase_id
           AND (p_required IS NULL OR balance_nano - held_nano >= p_required)
           AND NOT EXISTS (SELECT 1 FROM ledger_entries
                            WHERE purchase_id = p_purchase_id AND idempotency_key = p_key)
     RETURNING balance_nano, held_nano
    )
    INSERT INTO ledger_entries (
        purchase_id, kind, amount_nano, held_delta_nano, balance_after_nano, held_after_nano,
        idempotency_key, request_fingerprint, hold_id, source, meter, quantity, unit, metadata)
    SELECT p_purchase_id, p_kind, p_amount, 0, balance_nano, held_nano,
           p_key, p_fingerprint, NULL, p_source, p_meter, p_quantity, p_unit, p_metadata
      FROM updated
    RETURNING id, balance_after_nano, held_after_nano;
END
$$;
