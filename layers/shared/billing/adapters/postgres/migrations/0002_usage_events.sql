-- Metered usage as a time series (DESIGN §3). A TimescaleDB hypertable when the
-- extension can be created; otherwise native monthly range partitions, kept
-- ahead of time by ensure_usage_events_partitions() (migrate and every sweep).

DO $$
DECLARE
    columns text := $cols$
        purchase_id      uuid NOT NULL,
        occurred_at      timestamptz NOT NULL,
        recorded_at      timestamptz NOT NULL DEFAULT now(),
        idempotency_key  text NOT NULL,
        ledger_entry_id  bigint NOT NULL,
        meter            text NOT NULL,
        quantity         numeric NOT NULL,
        unit             text NOT NULL,
        cost_nano        bigint NOT NULL CHECK (cost_nano >= 0),
        description      text,
        metadata         jsonb NOT NULL DEFAULT '{}'
    $cols$;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            EXECUTE format('CREATE TABLE usage_events (%s)', columns);
            PERFORM create_hypertable('usage_events', 'occurred_at', chunk_time_interval => INTERVAL '7 days');
            CREATE INDEX usage_events_purchase_time ON usage_events (purchase_id, occurred_at DESC);
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'timescaledb is available but not usable (%); using native partitions', SQLERRM;
        END;
    END IF;
    EXECUTE format('CREATE TABLE usage_events (%s) PARTITION BY RANGE (occurred_at)', columns);
    CREATE INDEX usage_events_purchase_time ON usage_events (purchase_id, occurred_at DESC);
END
$$;

-- Creates the monthly partitions covering [first_month, first_month + months).
-- A no-op (returns 0) when usage_events is a hypertable or not partitioned.
CREATE FUNCTION ensure_usage_events_partitions(first_month date, months integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    created integer := 0;
    month_start date;
    partition_name text;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'usage_events'::regclass) <> 'p' THEN
        RETURN 0;
    END IF;
    FOR step IN 0 .. months - 1 LOOP
        month_start := (date_trunc('month', first_month) + make_interval(months => step))::date;
        partition_name := format('usage_events_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(partition_name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
                partition_name, month_start, (month_start + INTERVAL '1 month')::date
            );
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

SELECT ensure_usage_events_partitions((date_trunc('month', now()) - INTERVAL '2 months')::date, 6);
