-- How long each model takes, from submission to result: the source of estimated progress.
-- `running` remembers the model and submission time of each generation in flight.
CREATE TABLE IF NOT EXISTS {schema}.running (
    generation_id  uuid PRIMARY KEY,
    model          text NOT NULL,
    submitted_at   timestamptz
);
CREATE TABLE IF NOT EXISTS {schema}.samples (
    model        text NOT NULL,
    finished_at  timestamptz NOT NULL,
    duration_ms  integer NOT NULL CHECK (duration_ms >= 0)
);
CREATE INDEX IF NOT EXISTS samples_model_time ON {schema}.samples (model, finished_at DESC);
CREATE INDEX IF NOT EXISTS samples_time ON {schema}.samples (finished_at);
