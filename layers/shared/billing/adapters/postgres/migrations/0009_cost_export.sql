-- Cost-export billing (DESIGN §3, §6; docs/cost-export.md).
--
--   provisioned_resources    which purchase owns a bucket or key (provisioning fills it; attribution
--                            reads it, deleted buckets included: their last days still cost)
--   cost_export_deliveries   one row per delivery of a report: its fate, totals, unattributed summary
--   cost_export_charges      per (purchase, bucket, usage day, charge kind): what was billed so far.
--                            A delivery posts only target − billed, through the ledger.
--   cost_export_staged_costs a delivery's costs, COPYed in before the charging transaction (one
--                            attempt each); the charging transaction reads and deletes them.

CREATE TABLE provisioned_resources (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    purchase_id  uuid NOT NULL REFERENCES purchases (id),
    kind         text NOT NULL CHECK (kind IN ('s3_bucket', 'gemini_api_key')),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    region       text,
    status       text NOT NULL DEFAULT 'provisioning'
                 CHECK (status IN ('provisioning', 'active', 'suspended', 'deleted')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    CONSTRAINT provisioned_resources_name UNIQUE (kind, name),
    CONSTRAINT provisioned_resources_deleted_at CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX provisioned_resources_purchase ON provisioned_resources (purchase_id);

CREATE TABLE cost_export_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    report_name      text NOT NULL CHECK (length(report_name) BETWEEN 1 AND 512),
    format           text NOT NULL CHECK (format IN ('legacy_cur', 'cur2', 'focus')),
    billing_period   date NOT NULL CHECK (extract(day FROM billing_period) = 1),
    delivery_id      text NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 1024),
    delivered_at     timestamptz NOT NULL,
    manifest_bucket  text NOT NULL,
    manifest_key     text NOT NULL,
    data_files       integer NOT NULL DEFAULT 0 CHECK (data_files >= 0),
    status           text NOT NULL DEFAULT 'processing'
                     CHECK (status IN ('processing', 'applied', 'superseded', 'failed')),
    reason           text,
    attempts         integer NOT NULL DEFAULT 1 CHECK (attempts >= 0),
    rows_read        bigint CHECK (rows_read >= 0),
    s3_rows          bigint CHECK (s3_rows >= 0),
    staged_keys      bigint CHECK (staged_keys >= 0),
    charges_changed  bigint CHECK (charges_changed >= 0),
    charged_nano     bigint NOT NULL DEFAULT 0 CHECK (charged_nano >= 0),
    refunded_nano    bigint NOT NULL DEFAULT 0 CHECK (refunded_nano >= 0),
    --: [{"reason", "product", "cost" (decimal string), "rows"}, …]
    unattributed     jsonb NOT NULL DEFAULT '[]',
    --: the newer applied delivery that made this one superseded
    superseded_by    bigint REFERENCES cost_export_deliveries (id),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT cost_export_deliveries_once UNIQUE (report_name, billing_period, delivery_id),
    CONSTRAINT cost_export_deliveries_failed_has_reason CHECK (status <> 'failed' OR reason IS NOT NULL)
);
-- "Is a newer delivery of this period already applied?" and the operator's listing.
CREATE INDEX cost_export_deliveries_applied
    ON cost_export_deliveries (report_name, billing_period, delivered_at, delivery_id)
    WHERE status = 'applied';
CREATE INDEX cost_export_deliveries_recent ON cost_export_deliveries (started_at DESC);

CREATE TABLE cost_export_charges (
    purchase_id       uuid NOT NULL REFERENCES purchases (id),
    bucket            text NOT NULL,
    usage_day         date NOT NULL,
    charge_kind       text NOT NULL CHECK (charge_kind IN ('storage', 'requests', 'data_transfer', 'other')),
    --: AWS cost billed so far (exact), and the vendor price billed for it (cost × markup, rounded once)
    billed_cost       numeric NOT NULL,
    billed_nano       bigint NOT NULL,
    report_name       text NOT NULL,
    billing_period    date NOT NULL,
    last_delivery_id  bigint NOT NULL REFERENCES cost_export_deliveries (id),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (purchase_id, bucket, usage_day, charge_kind)
);
-- Keys billed before for a report and period but absent from a newer delivery are set to zero.
CREATE INDEX cost_export_charges_period ON cost_export_charges (report_name, billing_period);

CREATE TABLE cost_export_staged_costs (
    attempt       uuid NOT NULL,
    bucket        text NOT NULL,
    purchase_tag  text,
    usage_day     date NOT NULL,
    charge_kind   text NOT NULL,
    cost          numeric NOT NULL,
    --: set in the charging transaction: the purchase the cost is billed to, or why none
    purchase_id   uuid,
    unattributed  text,
    staged_at     timestamptz NOT NULL DEFAULT now()
);
-- Attribution joins on (attempt, bucket); the absent-key probe looks up whole keys.
CREATE INDEX cost_export_staged_costs_key ON cost_export_staged_costs (attempt, bucket, usage_day, charge_kind);
CREATE INDEX cost_export_staged_costs_age ON cost_export_staged_costs (staged_at);
