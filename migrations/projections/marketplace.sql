-- The marketplace projection's read tables, created in the projection's schema ({schema}).
-- The catalogue: one row per listing, updated in place as the listing changes (a catalogue is
-- read whole, by search and sort, not by time, so it is not partitioned). `installs` counts the
-- listing's installs not refunded; `event_version` is the listing's last event folded in.
-- `search` is generated: the title weighs more than the description.
CREATE TABLE IF NOT EXISTS {schema}.listings (
    id             uuid PRIMARY KEY,
    creator_id     uuid NOT NULL,
    workflow_id    uuid NOT NULL,
    version        integer NOT NULL,
    title          text NOT NULL,
    description    text NOT NULL,
    price          numeric(16,4) NOT NULL,
    status         text NOT NULL CHECK (status IN ('listed', 'unlisted')),
    installs       integer NOT NULL DEFAULT 0 CHECK (installs >= 0),
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    event_version  integer NOT NULL,
    search         tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, title), 'A')
        || setweight(to_tsvector('english'::regconfig, description), 'B')
    ) STORED
);
-- Browsing reads listed rows only, in one of three orders (each with the id as tie-break, the
-- keyset cursors' second key), or the matches of a text search.
CREATE INDEX IF NOT EXISTS listings_newest
    ON {schema}.listings (created_at DESC, id DESC) WHERE status = 'listed';
CREATE INDEX IF NOT EXISTS listings_installs
    ON {schema}.listings (installs DESC, id DESC) WHERE status = 'listed';
CREATE INDEX IF NOT EXISTS listings_price
    ON {schema}.listings (price, id) WHERE status = 'listed';
CREATE INDEX IF NOT EXISTS listings_search
    ON {schema}.listings USING gin (search) WHERE status = 'listed';
CREATE INDEX IF NOT EXISTS listings_creator ON {schema}.listings (creator_id);
-- One row per install, range-partitioned by month on created_at. `version` is the version the
-- buyer's copy is at (upgrades move it); amounts are what this install paid and how it was split.
CREATE TABLE IF NOT EXISTS {schema}.installs (
    install_id     uuid NOT NULL,
    created_at     timestamptz NOT NULL,
    listing_id     uuid NOT NULL,
    buyer_id       uuid NOT NULL,
    creator_id     uuid NOT NULL,
    workflow_id    uuid NOT NULL,
    version        integer NOT NULL,
    price          numeric(16,4) NOT NULL,
    fee            numeric(16,4) NOT NULL,
    earning        numeric(16,4) NOT NULL,
    status         text NOT NULL CHECK (status IN ('installed', 'refunded')),
    refunded_at    timestamptz,
    updated_at     timestamptz NOT NULL,
    event_version  integer NOT NULL,
    PRIMARY KEY (install_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS installs_buyer_time
    ON {schema}.installs (buyer_id, created_at DESC, install_id DESC);
CREATE INDEX IF NOT EXISTS installs_listing ON {schema}.installs (listing_id);
