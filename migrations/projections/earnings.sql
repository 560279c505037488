-- The earnings projection's read tables, created in the projection's schema ({schema}).
-- The holder of every credit account opened: an account's first earning may come many batches
-- after it was opened, and an account id does not give back its user.
CREATE TABLE IF NOT EXISTS {schema}.earning_holders (
    account_id  uuid PRIMARY KEY,
    user_id     uuid NOT NULL UNIQUE
);
-- One row per account that has ever earned (domain.earnings.EarningsPosition); `version` is
-- the account's last event that counted, `total` = earned - clawed_back - owed.
CREATE TABLE IF NOT EXISTS {schema}.earnings (
    account_id   uuid PRIMARY KEY,
    user_id      uuid NOT NULL UNIQUE,
    earned       numeric(16,4) NOT NULL,
    clawed_back  numeric(16,4) NOT NULL,
    owed         numeric(16,4) NOT NULL,
    total        numeric(16,4) NOT NULL,
    installs     integer NOT NULL,
    refunds      integer NOT NULL,
    version      integer NOT NULL,
    updated_at   timestamptz NOT NULL
);
-- One row per movement (earning, clawback, settled), range-partitioned by month on created_at.
CREATE TABLE IF NOT EXISTS {schema}.earning_items (
    id          uuid NOT NULL,
    created_at  timestamptz NOT NULL,
    account_id  uuid NOT NULL,
    user_id     uuid NOT NULL,
    kind        text NOT NULL,
    amount      numeric(16,4) NOT NULL,
    cause_type  text NOT NULL,
    cause_id    text NOT NULL,
    version     integer NOT NULL,
    note        text,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS earning_items_user_time
    ON {schema}.earning_items (user_id, created_at DESC, id DESC);
