-- Balance triggers (DESIGN §4): the purchase state machine runs inside every statement that
-- changes a balance, so no path (metering, deposits, hold expiry, cost export, operator SQL)
-- can move money without moving the status. billing/domain/triggers.py is the same rule in
-- Python; tests/integration/test_triggers.py checks the two agree.
--
--   down: the level the balance deserves     (balance <= threshold)
--   up:   the level it deserves on recovery  (balance <= threshold + hysteresis)
--   next = terminated stays terminated, else greatest(down, least(current, up))
--
-- Every transition writes its outbox rows (one per delivery channel) in the same statement.

ALTER TABLE purchases
    ADD COLUMN notify_email              text CHECK (notify_email IS NULL OR length(notify_email) <= 254),
    ADD COLUMN webhook_url               text CHECK (webhook_url IS NULL OR webhook_url ~ '^https://'),
    ADD COLUMN webhook_secret_ciphertext bytea,
    ADD COLUMN grace_period              interval NOT NULL DEFAULT interval '72 hours'
                                         CHECK (grace_period > interval '0'),
    ADD COLUMN status_version            integer NOT NULL DEFAULT 0,
    ADD COLUMN status_changed_at         timestamptz,
    ADD CONSTRAINT purchases_webhook_has_secret
        CHECK ((webhook_url IS NULL) = (webhook_secret_ciphertext IS NULL));

CREATE INDEX purchases_grace_due ON purchases (grace_until) WHERE status = 'suspended';

-- 5 % of the low trigger, at least one cent: a balance must clear a threshold by this much
-- before the purchase climbs back above it, so usage hovering at a threshold does not flap.
CREATE FUNCTION purchase_hysteresis_nano(low_trigger bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT greatest(low_trigger / 20, 10000000) $$;

CREATE FUNCTION purchase_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE status WHEN 'active' THEN 0 WHEN 'low' THEN 1 WHEN 'critical' THEN 2
                       WHEN 'suspended' THEN 3 ELSE 4 END
$$;

CREATE FUNCTION purchase_balance_rank(balance bigint, low bigint, critical bigint, termination bigint)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN balance <= termination THEN 3 WHEN balance <= critical THEN 2
                WHEN balance <= low THEN 1 ELSE 0 END
$$;

CREATE FUNCTION purchase_status_for(
    current_status text, balance bigint, low bigint, critical bigint, termination bigint
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (ARRAY['active', 'low', 'critical', 'suspended', 'terminated'])[1 + CASE
        WHEN current_status = 'terminated' THEN 4
        ELSE greatest(
            purchase_balance_rank(balance, low, critical, termination),
            least(
                purchase_status_rank(current_status),
                purchase_balance_rank(
                    balance,
                    low + purchase_hysteresis_nano(low),
                    critical + purchase_hysteresis_nano(low),
                    termination + purchase_hysteresis_nano(low))))
    END]
$$;

-- BEFORE: a balance (or threshold) change re-derives the status; a status change is stamped.
CREATE FUNCTION purchases_follow_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance_nano IS DISTINCT FROM OLD.balance_nano
       OR NEW.low_trigger_nano <> OLD.low_trigger_nano
       OR NEW.critical_trigger_nano <> OLD.critical_trigger_nano
       OR NEW.termination_trigger_nano <> OLD.termination_trigger_nano THEN
        NEW.status := purchase_status_for(NEW.status, NEW.balance_nano, NEW.low_trigger_nano,
                                          NEW.critical_trigger_nano, NEW.termination_trigger_nano);
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF OLD.status = 'terminated' THEN
            RAISE EXCEPTION 'purchase % is terminated; its status cannot change', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.status_version := OLD.status_version + 1;
        NEW.status_changed_at := now();
        IF NEW.status = 'suspended' THEN
            NEW.suspended_at := now();
            NEW.grace_until := now() + NEW.grace_period;
        ELSIF NEW.status = 'terminated' THEN
            NEW.terminated_at := now();
            NEW.grace_until := NULL;
        ELSE
            NEW.suspended_at := NULL;
            NEW.grace_until := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER purchases_follow_balance
    BEFORE UPDATE OF balance_nano, status, low_trigger_nano, critical_trigger_nano, termination_trigger_nano
    ON purchases FOR EACH ROW EXECUTE FUNCTION purchases_follow_balance();

-- AFTER: one outbox row per delivery channel and transition. The dedupe key names the
-- transition (status_version), so a crossing is notified once however often it is evaluated.
--   notify.email / notify.webhook / officex.status: delivered by the outbox dispatcher
--   resource.suspend / resource.resume / resource.delete: work for provisioning
CREATE FUNCTION purchases_status_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    key_prefix text := format('status:%s:%s:', NEW.id, NEW.status_version);
    payload jsonb := jsonb_build_object(
        'event', 'purchase.status_changed',
        'purchase_id', NEW.id,
        'offer_id', NEW.offer_id,
        'from', OLD.status,
        'to', NEW.status,
        'transition', NEW.status_version,
        'balance_nano', NEW.balance_nano,
        'held_nano', NEW.held_nano,
        'triggers', jsonb_build_object('low_nano', NEW.low_trigger_nano,
                                       'critical_nano', NEW.critical_trigger_nano,
                                       'termination_nano', NEW.termination_trigger_nano),
        'grace_until', NEW.grace_until,
        'occurred_at', NEW.status_changed_at);
    channel text;
BEGIN
    FOR channel IN
        SELECT c FROM (VALUES
            ('notify.email', NEW.notify_email IS NOT NULL),
            ('notify.webhook', NEW.webhook_url IS NOT NULL),
            ('officex.status', NEW.customer_org_endpoint IS NOT NULL AND NEW.customer_org_id IS NOT NULL
                               AND NEW.officex_purchase_id IS NOT NULL
                               AND NEW.customer_org_api_key_ciphertext IS NOT NULL),
            ('resource.suspend', NEW.status = 'suspended'),
            ('resource.resume', OLD.status = 'suspended' AND NEW.status <> 'terminated'),
            ('resource.delete', NEW.status = 'terminated')
        ) AS channels (c, wanted)
        WHERE wanted
    LOOP
        INSERT INTO outbox (purchase_id, kind, dedupe_key, payload)
        VALUES (NEW.id, channel, key_prefix || channel, payload);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER purchases_status_outbox
    AFTER UPDATE OF balance_nano, status, low_trigger_nano, critical_trigger_nano, termination_trigger_nano
    ON purchases FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION purchases_status_outbox();

CREATE INDEX outbox_due_by_kind ON outbox (kind, next_attempt_at) WHERE delivered_at IS NULL;
