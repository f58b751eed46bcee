-- Checkout wallets and deposits (DESIGN §3, §4): derivation index sequence, scan progress,
-- token facts pinned at creation, and an encrypted replay cache for finalize.

-- BIP-32 non-hardened indices stop at 2^31 - 1.
CREATE SEQUENCE checkout_wallet_hd_index MINVALUE 0 MAXVALUE 2147483647 START 0;

ALTER TABLE checkout_wallets
    ADD COLUMN chain text NOT NULL DEFAULT '',
    ADD COLUMN token_decimals integer NOT NULL DEFAULT 6 CHECK (token_decimals BETWEEN 0 AND 36),
    ADD COLUMN confirmations_required integer NOT NULL DEFAULT 1 CHECK (confirmations_required >= 1),
    ADD COLUMN last_scanned_block bigint;
ALTER TABLE checkout_wallets ALTER COLUMN chain DROP DEFAULT;
ALTER TABLE checkout_wallets DROP CONSTRAINT checkout_wallets_status_check;
ALTER TABLE checkout_wallets ADD CONSTRAINT checkout_wallets_status_check
    CHECK (status IN ('awaiting_payment', 'partially_paid', 'paid', 'expired', 'finalized'));

-- Wallets to re-scan without any call (top-ups): those with a purchase, by chain.
CREATE INDEX checkout_wallets_scan ON checkout_wallets (chain_id) WHERE purchase_id IS NOT NULL;

ALTER TABLE deposits
    ADD COLUMN ledger_entry_id bigint REFERENCES ledger_entries (id),
    ADD CONSTRAINT deposits_credited_has_purchase CHECK (state <> 'credited' OR purchase_id IS NOT NULL);

-- The answer to a finalize, encrypted with KMS, so that a retry with the same Idempotency-Key
-- gets the same answer (keys included) while no key is ever stored in clear.
CREATE TABLE finalize_replays (
    wallet_id            uuid NOT NULL REFERENCES checkout_wallets (id),
    idempotency_key      text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    request_fingerprint  text NOT NULL,
    response_ciphertext  bytea NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wallet_id, idempotency_key)
);
