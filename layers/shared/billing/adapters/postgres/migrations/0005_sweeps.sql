-- Sweeps (DESIGN §3): chain transactions that move deposit balances to the offramp.
-- A sweep never touches the ledger: the customer's money was credited when it arrived;
-- sweeping only moves the vendor's funds on chain. Token amounts and wei are NUMERIC(78,0).

CREATE TABLE sweeps (
    id                   uuid PRIMARY KEY,
    wallet_id            uuid NOT NULL REFERENCES checkout_wallets (id),
    chain_id             bigint NOT NULL,
    token_address        text NOT NULL,
    from_address         text NOT NULL,
    to_address           text NOT NULL,
    method               text NOT NULL CHECK (method IN ('eip3009', 'gas_topup')),
    amount_units         numeric(78, 0) NOT NULL CHECK (amount_units > 0),
    -- EIP-3009 authorization nonce (public once submitted; recorded before signing so a
    -- retry can only ever reuse it, never move the funds twice).
    authorization_nonce  bytea CHECK (authorization_nonce IS NULL OR length(authorization_nonce) = 32),
    -- gas_topup: the treasury's ETH transfer to the deposit address, and its value.
    topup_tx_hash        text,
    topup_wei            numeric(78, 0) CHECK (topup_wei IS NULL OR topup_wei >= 0),
    tx_hash              text,
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'submitted', 'confirmed', 'failed')),
    gas_spent_wei        numeric(78, 0) NOT NULL DEFAULT 0 CHECK (gas_spent_wei >= 0),
    error                text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sweeps_eip3009_has_nonce CHECK ((method = 'eip3009') = (authorization_nonce IS NOT NULL)),
    CONSTRAINT sweeps_sent_has_tx CHECK (status NOT IN ('submitted', 'confirmed') OR tx_hash IS NOT NULL)
);

-- At most one open sweep per wallet and token: two sweepers never move the same balance.
CREATE UNIQUE INDEX sweeps_one_open_per_wallet_token ON sweeps (wallet_id, token_address)
    WHERE status IN ('pending', 'submitted');
CREATE UNIQUE INDEX sweeps_tx_hash ON sweeps (chain_id, tx_hash) WHERE tx_hash IS NOT NULL;
CREATE INDEX sweeps_wallet ON sweeps (wallet_id, created_at);
