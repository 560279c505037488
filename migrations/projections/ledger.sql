-- The ledger projection's read tables, created in the projection's schema ({schema}).
CREATE TABLE IF NOT EXISTS {schema}.credit_balances (
    account_id  uuid PRIMARY KEY,
    user_id     uuid NOT NULL UNIQUE,
    balance     numeric(16,4) NOT NULL,
    held        numeric(16,4) NOT NULL,
    available   numeric(16,4) NOT NULL CHECK (available >= 0),
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- what clawbacks could not take yet (tables made before debts existed start with none)
ALTER TABLE {schema}.credit_balances ADD COLUMN IF NOT EXISTS owed numeric(16,4) NOT NULL DEFAULT 0;
-- the open debts, oldest first: [[cause_type, cause_id, units], ...]
ALTER TABLE {schema}.credit_balances ADD COLUMN IF NOT EXISTS debts jsonb NOT NULL DEFAULT '[]';

CREATE TABLE IF NOT EXISTS {schema}.credit_holds (
    hold_id     uuid PRIMARY KEY,
    account_id  uuid NOT NULL,
    user_id     uuid NOT NULL,
    amount      numeric(16,4) NOT NULL,
    cause_type  text NOT NULL,
    cause_id    text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS credit_holds_account ON {schema}.credit_holds (account_id);

CREATE TABLE IF NOT EXISTS {schema}.ledger_entries (
    id               uuid NOT NULL,
    created_at       timestamptz NOT NULL,
    account_id       uuid NOT NULL,
    user_id          uuid NOT NULL,
    kind             text NOT NULL,
    amount           numeric(16,4) NOT NULL,
    balance_after    numeric(16,4) NOT NULL,
    available_after  numeric(16,4) NOT NULL,
    cause_type       text NOT NULL,
    cause_id         text NOT NULL,
    hold_id          uuid,
    version          integer NOT NULL,
    note             text,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
-- tables made before `note` existed (rebuilding the projection fills it)
ALTER TABLE {schema}.ledger_entries ADD COLUMN IF NOT EXISTS note text;
CREATE INDEX IF NOT EXISTS ledger_entries_user_time ON {schema}.ledger_entries (user_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS ledger_entries_time ON {schema}.ledger_entries (created_at);
