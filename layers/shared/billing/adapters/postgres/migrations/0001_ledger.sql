-- Ledger foundation (DESIGN §3): offers, checkout wallets, deposits, purchases,
-- holds, ledger entries and the outbox. Money is BIGINT nano-USD; token amounts
-- are NUMERIC(78,0) base units.

CREATE TABLE offers (
    id                 text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    sku                text NOT NULL UNIQUE,
    kind               text NOT NULL,
    title              text NOT NULL,
    description        text NOT NULL DEFAULT '',
    pricing            jsonb NOT NULL DEFAULT '{}',
    min_deposit_nano   bigint NOT NULL CHECK (min_deposit_nano >= 0),
    payment_options    jsonb NOT NULL DEFAULT '[]',
    default_triggers   jsonb NOT NULL DEFAULT '{}',
    suggest_tags       jsonb NOT NULL DEFAULT '{}',
    active             boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkout_wallets (
    id                       uuid PRIMARY KEY,
    offer_id                 text NOT NULL REFERENCES offers (id),
    chain_id                 bigint NOT NULL,
    token                    text NOT NULL,
    token_address            text NOT NULL,
    address                  text NOT NULL,
    hd_index                 bigint NOT NULL UNIQUE CHECK (hd_index >= 0 AND hd_index < 2147483648),
    min_target_balance_nano  bigint NOT NULL CHECK (min_target_balance_nano > 0),
    status                   text NOT NULL DEFAULT 'awaiting_payment'
                             CHECK (status IN ('awaiting_payment', 'paid', 'expired', 'finalized')),
    expires_at               timestamptz NOT NULL,
    created_block            bigint,
    customer                 jsonb NOT NULL DEFAULT '{}',
    purchase_id              uuid UNIQUE,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chain_id, address)
);

CREATE TABLE purchases (
    id                              uuid PRIMARY KEY,
    offer_id                        text NOT NULL REFERENCES offers (id),
    wallet_id                       uuid UNIQUE REFERENCES checkout_wallets (id),
    officex_purchase_id             text,
    customer_org_id                 text,
    customer_user_id                text,
    customer_org_endpoint           text,
    customer_org_api_key_ciphertext bytea,
    status                          text NOT NULL DEFAULT 'active'
                                    CHECK (status IN ('active', 'low', 'critical', 'suspended', 'terminated')),
    balance_nano                    bigint NOT NULL DEFAULT 0,
    held_nano                       bigint NOT NULL DEFAULT 0 CHECK (held_nano >= 0),
    low_trigger_nano                bigint NOT NULL,
    critical_trigger_nano           bigint NOT NULL,
    termination_trigger_nano        bigint NOT NULL,
    customer_key_hash               bytea NOT NULL CHECK (length(customer_key_hash) = 32),
    vendor_key_hash                 bytea NOT NULL CHECK (length(vendor_key_hash) = 32),
    resource                        jsonb NOT NULL DEFAULT '{}',
    suspended_at                    timestamptz,
    grace_until                     timestamptz,
    terminated_at                   timestamptz,
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT purchases_triggers_ordered CHECK (
        low_trigger_nano > critical_trigger_nano
        AND critical_trigger_nano > termination_trigger_nano
        AND termination_trigger_nano >= 0
    )
);

ALTER TABLE checkout_wallets
    ADD CONSTRAINT checkout_wallets_purchase_fk FOREIGN KEY (purchase_id) REFERENCES purchases (id);

CREATE TABLE deposits (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id         bigint NOT NULL,
    tx_hash          text NOT NULL,
    log_index        integer NOT NULL CHECK (log_index >= 0),
    wallet_id        uuid NOT NULL REFERENCES checkout_wallets (id),
    token_address    text NOT NULL,
    sender           text NOT NULL,
    amount_units     numeric(78, 0) NOT NULL CHECK (amount_units > 0),
    amount_nano      bigint NOT NULL CHECK (amount_nano >= 0),
    block_number     bigint NOT NULL,
    block_hash       text,
    state            text NOT NULL DEFAULT 'seen' CHECK (state IN ('seen', 'confirmed', 'credited', 'reorged')),
    purchase_id      uuid REFERENCES purchases (id),
    seen_at          timestamptz NOT NULL DEFAULT now(),
    confirmed_at     timestamptz,
    credited_at      timestamptz,
    UNIQUE (chain_id, tx_hash, log_index)
);
CREATE INDEX deposits_wallet ON deposits (wallet_id);

CREATE TABLE holds (
    id           uuid PRIMARY KEY,
    purchase_id  uuid NOT NULL REFERENCES purchases (id),
    amount_nano  bigint NOT NULL CHECK (amount_nano > 0),
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'captured', 'released', 'expired')),
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    settled_at   timestamptz
);
CREATE INDEX holds_active_by_expiry ON holds (expires_at) WHERE status = 'active';
CREATE INDEX holds_purchase ON holds (purchase_id);

CREATE TABLE ledger_entries (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    purchase_id          uuid NOT NULL REFERENCES purchases (id),
    at                   timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind                 text NOT NULL
                         CHECK (kind IN ('deposit', 'usage', 'hold', 'release', 'adjustment', 'reversal')),
    amount_nano          bigint NOT NULL,
    held_delta_nano      bigint NOT NULL DEFAULT 0,
    balance_after_nano   bigint NOT NULL,
    held_after_nano      bigint NOT NULL,
    idempotency_key      text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    request_fingerprint  text NOT NULL,
    hold_id              uuid REFERENCES holds (id),
    source               text NOT NULL,
    meter                text,
    quantity             numeric,
    unit                 text,
    metadata             jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT ledger_entries_idempotency UNIQUE (purchase_id, idempotency_key),
    CONSTRAINT ledger_entries_kind_signs CHECK (
        CASE kind
            WHEN 'deposit'    THEN amount_nano > 0 AND held_delta_nano = 0
            WHEN 'usage'      THEN amount_nano < 0
            WHEN 'hold'       THEN amount_nano = 0 AND held_delta_nano > 0
            WHEN 'release'    THEN amount_nano = 0 AND held_delta_nano < 0
            ELSE amount_nano <> 0 AND held_delta_nano = 0
        END
    )
);
CREATE INDEX ledger_entries_purchase_at ON ledger_entries (purchase_id, at);

CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    purchase_id      uuid REFERENCES purchases (id),
    kind             text NOT NULL,
    dedupe_key       text NOT NULL UNIQUE,
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
