-- App-store lists, and the catalog file's order for offers and lists (exports round-trip exactly).

ALTER TABLE offers ADD COLUMN position integer NOT NULL DEFAULT 0;

CREATE TABLE appstore_lists (
    id            text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    title         text NOT NULL,
    description   text NOT NULL DEFAULT '',
    offer_ids     text[] NOT NULL CHECK (cardinality(offer_ids) > 0),
    suggest_tags  jsonb NOT NULL DEFAULT '{}',
    priority      integer NOT NULL DEFAULT 0,
    position      integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
