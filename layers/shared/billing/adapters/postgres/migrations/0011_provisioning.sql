-- Provisioning (docs/provisioning.md): the resource a purchase delivers, the steps each action
-- took, and the credentials the customer is shown once.
--
--   provisioned_resources   (migration 0009) + what provisioning needs: the public summary, the
--                           one-time credentials (KMS ciphertext, wiped once shown), the last error
--   provisioning_steps      the step log: one row per completed step of one run of one action.
--                           A run is the outbox row that asked for the action (resource.provision,
--                           resource.suspend, …), so a crash-and-rerun of that row finds its steps
--                           and skips them, while a later suspend (another row) starts afresh.
--
-- The work queue is the outbox: resource.suspend / resume / delete rows come from the status
-- trigger (migration 0007), resource.provision rows from finalize.

ALTER TABLE provisioned_resources
    --: public facts for the customer (bucket, endpoint, IAM user, access key id, …); never a secret
    ADD COLUMN summary                jsonb NOT NULL DEFAULT '{}',
    --: the one-time credentials, KMS-encrypted (context: purpose, purchase_id, resource_id);
    --: set when provisioning completes, set to NULL once shown (or when the resource is deleted)
    ADD COLUMN credentials_ciphertext bytea,
    ADD COLUMN credentials_issued_at  timestamptz,
    ADD COLUMN credentials_shown_at   timestamptz,
    ADD COLUMN last_action            text CHECK (last_action IN ('provision', 'suspend', 'resume', 'delete')),
    ADD COLUMN last_error             text CHECK (last_error IS NULL OR length(last_error) <= 500),
    ADD COLUMN last_error_at          timestamptz,
    ADD CONSTRAINT provisioned_resources_no_credentials_when_deleted
        CHECK (status <> 'deleted' OR credentials_ciphertext IS NULL);

-- One resource of a kind per purchase: provisioning inserts it once and finds it on every rerun.
CREATE UNIQUE INDEX provisioned_resources_purchase_kind ON provisioned_resources (purchase_id, kind);

CREATE TABLE provisioning_steps (
    resource_id  uuid NOT NULL REFERENCES provisioned_resources (id),
    action       text NOT NULL CHECK (action IN ('provision', 'suspend', 'resume', 'delete')),
    --: the outbox row (id) whose action this step belongs to
    run          bigint NOT NULL,
    step         text NOT NULL CHECK (step ~ '^[a-z0-9_.:-]{1,100}$'),
    --: what the step found or made (ids, names); never a secret
    outcome      jsonb NOT NULL DEFAULT '{}',
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (resource_id, action, run, step)
);
CREATE INDEX provisioning_steps_recent ON provisioning_steps (recorded_at DESC);

-- The provisioning worker's claim: undelivered resource.* rows, oldest first per purchase.
CREATE INDEX outbox_resource_pending ON outbox (purchase_id, id)
    WHERE delivered_at IS NULL AND kind LIKE 'resource.%';

-- Would the deposits seen on the purchase's address (not yet credited) lift it out of
-- suspension once they confirm? Deletion waits while they are pending (termination safety).
CREATE FUNCTION purchase_rescue_pending(p_purchase_id uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(bool_or(pending.total > 0 AND purchase_status_for(
               'suspended'::text, p.balance_nano + pending.total, p.low_trigger_nano, p.critical_trigger_nano,
               p.termination_trigger_nano) <> 'suspended'), false)
      FROM purchases p
      CROSS JOIN LATERAL (
          SELECT COALESCE(sum(d.amount_nano), 0)::bigint AS total
            FROM checkout_wallets w
            JOIN deposits d ON d.wallet_id = w.id
           WHERE w.purchase_id = p.id AND d.state IN ('seen', 'confirmed')
      ) pending
     WHERE p.id = p_purchase_id
$$;
