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
