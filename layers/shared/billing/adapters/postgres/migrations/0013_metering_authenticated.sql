-- meter-usage authenticates inside its one statement (docs/benchmarks.md, "Metering"; docs/decisions.md).
--
-- meter_usage_apply() of migration 0010, with two changes:
-- 1. It takes the SHA-256 of the presented vendor key and writes nothing unless it is the purchase's
--    (SQLSTATE BL401: the same error for an unknown purchase and for a wrong key). Events with an
--    explicit cost need no read before the write: one statement and one round trip per request.
--    Comparing hashes in SQL leaks no key: timing could at most tell how much of the stored hash a
--    chosen hash shares, and the stored hash does not open the purchase (a preimage would).
-- 2. It answers with one row: the entries as arrays in request order, and the purchase as
--    PostgresPurchaseStore.view reads it (wallet columns included), so nobody reads it again.
--
-- The rest is 0010 unchanged: a single event goes through ledger_apply_balance_change(); a batch
-- locks the purchase, looks every key up on the unique index, and writes all at once unless a
-- threshold is crossed inside it (then event by event, so the status trigger sees each crossing).

DROP FUNCTION meter_usage_apply(uuid, jsonb);

CREATE FUNCTION meter_usage_apply(p_purchase_id uuid, p_vendor_key_hash bytea, p_events jsonb)
RETURNS TABLE (
    charged_ids bigint[], charged_amounts bigint[], charged_replays boolean[],
    view_id uuid, view_offer_id text, view_status text, view_balance bigint, view_held bigint,
    view_low_trigger bigint, view_critical_trigger bigint, view_termination_trigger bigint,
    view_deposit_address text, view_deposit_chain_id bigint, view_deposit_token text, view_resource jsonb,
    view_created_at timestamptz, view_updated_at timestamptz, view_grace_until timestamptz
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
-- Arrays are indexed by the event's place in the call (1-based). No statement joins the events to
-- their entries by key: with a handful of rows the planner's estimates make such joins quadratic.
DECLARE
    events_count integer := jsonb_array_length(p_events);
    purchase record;
    event record;
    recorded record;
    event_amounts bigint[];
    used_ids bigint[];            -- the entry already holding the event's key, if any
    used_amounts bigint[];
    first_ords integer[];         -- where the event's key is first used in this call
    conflicting_key text;
    new_ords integer[];           -- the events to write, in request order
    new_keys text[];
    new_total bigint;
    written boolean := false;
    written_ids bigint[];
    written_keys text[];
    applied_id bigint;
    ids bigint[];
    replays boolean[];
BEGIN
    ids := array_fill(NULL::bigint, ARRAY[events_count]);
    IF events_count = 1 THEN
        -- One event: the single ledger statement decides; the key is looked up only if it was used.
        PERFORM FROM purchases p WHERE p.id = p_purchase_id AND p.vendor_key_hash = p_vendor_key_hash;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'invalid purchase id or API key' USING ERRCODE = 'BL401';
        END IF;
        event_amounts := ARRAY[NULL::bigint];
        used_ids := ARRAY[NULL::bigint];
        used_amounts := ARRAY[NULL::bigint];
        first_ords := ARRAY[1];
        new_ords := ARRAY[1];
    ELSIF events_count > 1 THEN
        SELECT p.status, p.balance_nano, p.held_nano, p.low_trigger_nano, p.critical_trigger_nano,
               p.termination_trigger_nano
          INTO purchase
          FROM purchases p WHERE p.id = p_purchase_id AND p.vendor_key_hash = p_vendor_key_hash
           FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'invalid purchase id or API key' USING ERRCODE = 'BL401';
        END IF;

        -- Every key is looked up on its own, with both columns of the unique (purchase_id,
        -- idempotency_key) index, like the probe of ledger_apply_balance_change(): a key array or a
        -- join lets stale statistics pick a scan of the purchase's whole history instead
        -- (docs/benchmarks.md). OFFSET 0 keeps the lookup a per-key subquery.
        WITH ev AS (
            SELECT r.ord, r.key, r.fingerprint, r.amount,
                   first_value(r.ord) OVER same_key AS first_ord,
                   first_value(r.fingerprint) OVER same_key AS first_fingerprint
              FROM meter_usage_rows(p_events) r
            WINDOW same_key AS (PARTITION BY r.key ORDER BY r.ord)
        ), probed AS (
            SELECT ev.*, used.id AS used_id, used.amount_nano AS used_amount,
                   used.request_fingerprint AS used_fingerprint,
                   used.id IS NULL AND ev.first_ord = ev.ord AS is_new
              FROM ev
              LEFT JOIN LATERAL (
                  SELECT le.id, le.amount_nano, le.request_fingerprint FROM ledger_entries le
                   WHERE le.purchase_id = p_purchase_id AND le.idempotency_key = ev.key
                  OFFSET 0
              ) used ON true
        )
        SELECT array_agg(amount ORDER BY ord),
               array_agg(used_id ORDER BY ord),
               array_agg(used_amount ORDER BY ord),
               array_agg(first_ord ORDER BY ord),
               (array_agg(key ORDER BY ord) FILTER (
                   WHERE used_fingerprint <> fingerprint
                      OR (used_id IS NULL AND first_fingerprint <> fingerprint)))[1],
               COALESCE(array_agg(ord ORDER BY ord) FILTER (WHERE is_new), '{}'),
               COALESCE(array_agg(key ORDER BY ord) FILTER (WHERE is_new), '{}'),
               COALESCE(sum(amount) FILTER (WHERE is_new), 0)
          INTO event_amounts, used_ids, used_amounts, first_ords, conflicting_key, new_ords, new_keys,
               new_total
          FROM probed;

        IF conflicting_key IS NOT NULL THEN
            RAISE EXCEPTION 'idempotency key already used for a different request'
                USING ERRCODE = 'BL409', DETAIL = conflicting_key;
        END IF;
        FOR i IN 1 .. cardinality(new_ords) LOOP
            IF event_amounts[new_ords[i]] >= 0 THEN
                RAISE EXCEPTION 'usage amounts must be negative' USING ERRCODE = 'check_violation';
            END IF;
        END LOOP;

        IF cardinality(new_ords) > 0
           AND purchase_status_for(purchase.status, purchase.balance_nano + event_amounts[new_ords[1]],
                                   purchase.low_trigger_nano, purchase.critical_trigger_nano,
                                   purchase.termination_trigger_nano) = purchase.status
           AND purchase_status_for(purchase.status, purchase.balance_nano + new_total,
                                   purchase.low_trigger_nano, purchase.critical_trigger_nano,
                                   purchase.termination_trigger_nano) = purchase.status THEN
            -- No threshold is crossed: one update of the purchase, all entries and usage rows at once.
            UPDATE purchases SET balance_nano = balance_nano + new_total, updated_at = now()
             WHERE id = p_purchase_id;
            WITH entries AS (
                INSERT INTO ledger_entries (
                    purchase_id, kind, amount_nano, held_delta_nano, balance_after_nano, held_after_nano,
                    idempotency_key, request_fingerprint, hold_id, source, meter, quantity, unit, metadata)
                SELECT p_purchase_id, 'usage', fresh.amount, 0, fresh.balance_after, purchase.held_nano,
                       fresh.key, fresh.fingerprint, NULL, 'meter-usage', fresh.meter, fresh.quantity,
                       fresh.unit, fresh.ledger_metadata
                  FROM (SELECT r.*, purchase.balance_nano + sum(r.amount) OVER (ORDER BY r.ord) AS balance_after
                          FROM meter_usage_rows(p_events) r
                         WHERE r.ord = ANY (new_ords)) fresh
                 ORDER BY fresh.ord
                RETURNING id, idempotency_key
            )
            SELECT array_agg(id ORDER BY id), array_agg(idempotency_key ORDER BY id)
              INTO written_ids, written_keys
              FROM entries;
            -- Ids follow the insert order, i.e. request order (so the newest entry carries the final
            -- balance); checked rather than assumed, since the usage rows are linked by position.
            IF written_keys IS DISTINCT FROM new_keys THEN
                RAISE EXCEPTION 'ledger entries were not written in request order';
            END IF;
            FOR i IN 1 .. cardinality(new_ords) LOOP
                ids[new_ords[i]] := written_ids[i];
            END LOOP;
            INSERT INTO usage_events (purchase_id, occurred_at, idempotency_key, ledger_entry_id, meter,
                                      quantity, unit, cost_nano, description, metadata)
            SELECT p_purchase_id, r.occurred_at, r.key, ids[r.ord], r.meter, r.quantity, r.unit, r.cost,
                   r.description, r.usage_metadata
              FROM meter_usage_rows(p_events) r
             WHERE r.ord = ANY (new_ords);
            written := true;
        END IF;
    END IF;

    IF NOT written THEN
        -- One event, or a threshold is crossed: event by event, each through the ledger's own
        -- statement, so the status trigger sees every crossing at the event that causes it.
        FOR event IN
            SELECT r.* FROM meter_usage_rows(p_events) r WHERE r.ord = ANY (new_ords) ORDER BY r.ord
        LOOP
            event_amounts[event.ord] := event.amount;
            SELECT applied.entry_id INTO applied_id
              FROM ledger_apply_balance_change(p_purchase_id, 'usage', event.amount, NULL, event.key,
                                               event.fingerprint, 'meter-usage', event.meter,
                                               event.quantity, event.unit, event.ledger_metadata) AS applied;
            IF FOUND THEN
                INSERT INTO usage_events (purchase_id, occurred_at, idempotency_key, ledger_entry_id, meter,
                                          quantity, unit, cost_nano, description, metadata)
                VALUES (p_purchase_id, event.occurred_at, event.key, applied_id, event.meter, event.quantity,
                        event.unit, event.cost, event.description, event.usage_metadata);
                ids[event.ord] := applied_id;
            ELSE  -- the key is used already (only possible for a single event: a batch looked first)
                SELECT le.id, le.amount_nano, le.request_fingerprint INTO recorded
                  FROM ledger_entries le
                 WHERE le.purchase_id = p_purchase_id AND le.idempotency_key = event.key;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'purchase % not found', p_purchase_id USING ERRCODE = 'BL404';
                END IF;
                IF recorded.request_fingerprint <> event.fingerprint THEN
                    RAISE EXCEPTION 'idempotency key already used for a different request'
                        USING ERRCODE = 'BL409', DETAIL = event.key;
                END IF;
                used_ids[event.ord] := recorded.id;
                used_amounts[event.ord] := recorded.amount_nano;
            END IF;
        END LOOP;
    END IF;

    -- Replays answer with the entry holding their key: an earlier one, or the first use in this call.
    replays := array_fill(false, ARRAY[events_count]);
    FOR i IN 1 .. events_count LOOP
        IF used_ids[i] IS NOT NULL THEN
            ids[i] := used_ids[i];
            event_amounts[i] := used_amounts[i];
            replays[i] := true;
        ELSIF first_ords[i] <> i THEN
            ids[i] := ids[first_ords[i]];
            replays[i] := true;
        END IF;
    END LOOP;

    RETURN QUERY
    SELECT ids, event_amounts, replays,
           p.id, p.offer_id, p.status, p.balance_nano, p.held_nano,
           p.low_trigger_nano, p.critical_trigger_nano, p.termination_trigger_nano,
           w.address, w.chain_id, w.token, p.resource, p.created_at, p.updated_at, p.grace_until
      FROM purchases p LEFT JOIN checkout_wallets w ON w.id = p.wallet_id
     WHERE p.id = p_purchase_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'purchase % not found', p_purchase_id USING ERRCODE = 'BL404';
    END IF;
END
$$;
