-- Provider health: one row per call a generation made to a provider (the adapter's own quick
-- retries inside it), with what it came to. `in_flight` remembers, per unfinished generation,
-- the provider and model it is at and when its current call was accepted.
CREATE TABLE IF NOT EXISTS {schema}.in_flight (
    generation_id  uuid PRIMARY KEY,
    provider       text NOT NULL,
    model          text NOT NULL,
    submitted_at   timestamptz,
    attempt        integer NOT NULL DEFAULT 0
);
-- outcome: ok | rejected (the provider refused the request: its safety filter, or the input) |
-- unavailable | timeout | rate_limited | provider_error. latency_ms: from the call's acceptance
-- (or start, for a synchronous provider) to its outcome; NULL when no call was accepted.
-- `position` is the event's notification id: a replayed batch inserts nothing twice.
CREATE TABLE IF NOT EXISTS {schema}.calls (
    position       bigint NOT NULL,
    created_at     timestamptz NOT NULL,
    generation_id  uuid NOT NULL,
    provider       text NOT NULL,
    model          text NOT NULL,
    outcome        text NOT NULL,
    latency_ms     integer CHECK (latency_ms >= 0),
    error          text,
    attempt        integer NOT NULL,
    PRIMARY KEY (position, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS calls_provider_time ON {schema}.calls (provider, created_at DESC);
CREATE INDEX IF NOT EXISTS calls_time ON {schema}.calls (created_at);
-- the last errors, per provider and model
CREATE INDEX IF NOT EXISTS calls_failures ON {schema}.calls (provider, model, created_at DESC)
    WHERE outcome NOT IN ('ok', 'rejected');
