-- The workflows projection's read tables, created in the projection's schema ({schema}).
-- A user's workflows and their immutable versions (few rows: not partitioned).
CREATE TABLE IF NOT EXISTS {schema}.workflow_templates (
    id              uuid PRIMARY KEY,
    owner_id        uuid NOT NULL,
    name            text NOT NULL,
    description     text NOT NULL,
    latest_version  integer,
    source          jsonb,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS workflow_templates_owner
    ON {schema}.workflow_templates (owner_id, created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS {schema}.workflow_versions (
    workflow_id  uuid NOT NULL,
    version      integer NOT NULL,
    graph        jsonb NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, version)
);
-- One row per run, range-partitioned by month on created_at (run ids are UUIDv7, so an id
-- alone names its month). `state` is the run as domain.workflow.fold has it, encoded so that
-- it decodes to the same values (datetimes and UUIDs tagged) and can be folded further; `doc`
-- is its API document. `deadline` is the earliest deadline of its queued or running nodes
-- (NULL when none): the sweeper reads `deadline < now()`. `event_version` is the last event
-- of the run folded in; `position` its notification id.
CREATE TABLE IF NOT EXISTS {schema}.workflow_runs (
    id             uuid NOT NULL,
    created_at     timestamptz NOT NULL,
    user_id        uuid NOT NULL,
    workflow_id    uuid NOT NULL,
    version        integer NOT NULL,
    status         text NOT NULL,
    state          jsonb NOT NULL,
    doc            jsonb NOT NULL,
    deadline       timestamptz,
    updated_at     timestamptz NOT NULL,
    event_version  integer NOT NULL,
    position       bigint NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS workflow_runs_user_time
    ON {schema}.workflow_runs (user_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS workflow_runs_deadline ON {schema}.workflow_runs (deadline)
    WHERE deadline IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled');
-- The runs' live feed, as the generations projection's: one row per change a subscriber sees,
-- written with the run rows and published to Redis after commit. `position` is the event's
-- notification id in the workflows log: the run stream's SSE event id.
CREATE TABLE IF NOT EXISTS {schema}.feed (
    position    bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    user_id     uuid NOT NULL,
    run_id      uuid NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    PRIMARY KEY (position, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS feed_run ON {schema}.feed (run_id, position);
CREATE INDEX IF NOT EXISTS feed_user ON {schema}.feed (user_id, position);
CREATE TABLE IF NOT EXISTS {schema}.feed_published (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position   bigint NOT NULL
);
