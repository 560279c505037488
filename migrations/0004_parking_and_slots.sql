-- Work that cannot go on now waits here, durably, instead of in the broker's retries: a
-- reaction's message (its key is the message) is parked by the worker, and the scheduler sends
-- it again. kind 'deferred': at not_before (a provider is down, a cancel was not answered);
-- kind 'capped': when one of user_id's provider slots frees, oldest notification first.
CREATE TABLE IF NOT EXISTS reactions.parked (
    reaction         text NOT NULL,
    upstream         text NOT NULL,
    notification_id  bigint NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('deferred', 'capped')),
    reason           text NOT NULL,
    generation_id    uuid,
    user_id          uuid,
    not_before       timestamptz,
    parked_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (reaction, upstream, notification_id),
    CHECK ((kind = 'deferred') = (not_before IS NOT NULL)),
    CHECK (kind = 'deferred' OR user_id IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS parked_due ON reactions.parked (not_before)
    WHERE kind = 'deferred';
CREATE INDEX IF NOT EXISTS parked_in_line ON reactions.parked (user_id, notification_id)
    WHERE kind = 'capped';

-- One row per generation at a provider (or admitted to go there): at most the configured cap
-- per user. Taken and counted under a per-user advisory transaction lock.
CREATE TABLE IF NOT EXISTS reactions.provider_slots (
    generation_id  uuid PRIMARY KEY,
    user_id        uuid NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS provider_slots_user ON reactions.provider_slots (user_id);
