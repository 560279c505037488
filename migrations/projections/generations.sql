-- The generations projection's read table, created in the projection's schema ({schema}).
-- Range-partitioned by month on created_at; ids are UUIDv7, so an id alone names its month.
CREATE TABLE IF NOT EXISTS {schema}.generations (
    id                  uuid NOT NULL,
    created_at          timestamptz NOT NULL,
    user_id             uuid NOT NULL,
    model_key           text NOT NULL,
    requested_model     text NOT NULL,
    provider            text NOT NULL,
    status              text NOT NULL,
    prompt              text NOT NULL,
    negative_prompt     text,
    params              jsonb NOT NULL,
    output_format       text NOT NULL,
    fingerprint         text NOT NULL,
    result_metadata     jsonb,
    error               jsonb,
    generation_time_ms  integer,
    cost_credits        numeric(10,4) NOT NULL,
    charged_credits     numeric(10,4),
    fallback_from       text,
    notice              text,
    served_from_cache   boolean NOT NULL DEFAULT false,
    completed_at        timestamptz,
    updated_at          timestamptz NOT NULL,
    version             integer NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS generations_user_time ON {schema}.generations (user_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS generations_model_status ON {schema}.generations (model_key, status);
CREATE INDEX IF NOT EXISTS generations_time ON {schema}.generations (created_at);
-- the generation cache: completed results of identical normalised requests
CREATE INDEX IF NOT EXISTS generations_cache ON {schema}.generations (fingerprint, created_at)
    WHERE status = 'completed' AND NOT served_from_cache AND fallback_from IS NULL;
-- The live feed: one row per change a subscriber sees, written in the same transaction as the
-- generation rows (so a `completed` message and the read model never disagree) and published to
-- Redis after commit. `position` is the event's notification id: the SSE event id clients resume
-- from. Partitioned by month like the rows; resume reads only recent partitions.
CREATE TABLE IF NOT EXISTS {schema}.feed (
    position       bigint NOT NULL,
    created_at     timestamptz NOT NULL,
    user_id        uuid NOT NULL,
    generation_id  uuid NOT NULL,
    type           text NOT NULL,
    data           jsonb NOT NULL,
    PRIMARY KEY (position, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS feed_generation ON {schema}.feed (generation_id, position);
CREATE INDEX IF NOT EXISTS feed_user ON {schema}.feed (user_id, position);
-- How far the feed has been published: a runner that died between commit and publish sends
-- the rest again when it starts (subscribers drop what they already have by position).
CREATE TABLE IF NOT EXISTS {schema}.feed_published (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position   bigint NOT NULL
);
-- When an unfinished generation is past due (a deferred one: when it gives up; any other: its
-- model's total timeout plus a margin after it entered its status): the scheduler's sweep
-- reads it. NULL once finished. And why and until when a deferred one waits.
ALTER TABLE {schema}.generations ADD COLUMN IF NOT EXISTS deadline_at timestamptz;
ALTER TABLE {schema}.generations ADD COLUMN IF NOT EXISTS waiting jsonb;
CREATE INDEX IF NOT EXISTS generations_deadline ON {schema}.generations (deadline_at)
    WHERE deadline_at IS NOT NULL;
