-- Provisional S3 charges before the cost export arrives (docs/usage-estimates.md).
--
--   ledger_entries.kind 'estimate'   a debit like 'usage' (amount < 0), posted by the usage
--                                    estimator; reversed ('reversal', a credit) when the cost
--                                    export bills the same bucket and day
--   usage_estimates                  per (purchase, bucket, usage day, charge kind), like
--                                    cost_export_charges: what was estimated so far, up to which
--                                    estimator window, and whether the export has settled it
--   usage_estimates_unsettled        the operator report: estimates no export has replaced yet

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('deposit', 'usage', 'hold', 'release', 'adjustment', 'reversal', 'estimate'));

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_signs;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_signs CHECK (
    CASE kind
        WHEN 'deposit'    THEN amount_nano > 0 AND held_delta_nano = 0
        WHEN 'usage'      THEN amount_nano < 0
        WHEN 'estimate'   THEN amount_nano < 0 AND held_delta_nano = 0
        WHEN 'hold'       THEN amount_nano = 0 AND held_delta_nano > 0
        WHEN 'release'    THEN amount_nano = 0 AND held_delta_nano < 0
        ELSE amount_nano <> 0 AND held_delta_nano = 0
    END
);

CREATE TABLE usage_estimates (
    purchase_id          uuid NOT NULL REFERENCES purchases (id),
    bucket               text NOT NULL,
    usage_day            date NOT NULL,
    charge_kind          text NOT NULL CHECK (charge_kind IN ('storage', 'requests', 'data_transfer')),
    --: Σ of the estimate entries posted for the key (the day's estimated price so far, never lowered)
    estimated_nano       bigint NOT NULL DEFAULT 0 CHECK (estimated_nano >= 0),
    --: the measured usage behind it (GiB-days, requests, or bytes), for the operator
    quantity             numeric NOT NULL DEFAULT 0,
    --: the newest estimator window (its end) that looked at this key; a rerun of it changes nothing
    last_window_end      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    --: set once, when the cost export billed this bucket and day: the estimate was reversed
    settled_at           timestamptz,
    settled_by_delivery  bigint REFERENCES cost_export_deliveries (id),
    reversed_nano        bigint CHECK (reversed_nano >= 0),
    PRIMARY KEY (purchase_id, bucket, usage_day, charge_kind),
    CONSTRAINT usage_estimates_settled CHECK ((settled_at IS NULL) = (reversed_nano IS NULL))
);
CREATE INDEX usage_estimates_open_by_day ON usage_estimates (usage_day) WHERE settled_at IS NULL;

CREATE VIEW usage_estimates_unsettled AS
SELECT e.purchase_id, e.bucket, e.usage_day, e.charge_kind, e.estimated_nano, e.quantity,
       e.last_window_end, (current_date - e.usage_day) AS age_days
  FROM usage_estimates e
 WHERE e.settled_at IS NULL AND e.estimated_nano > 0;
