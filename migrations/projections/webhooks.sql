-- The webhooks outbox, in one schema ({schema}: proj_webhooks) shared by the views that follow
-- the webhooks, generations, workflows and marketplace logs. It is the delivery state (what was
-- sent, when, with what answer), so it is never rebuilt from the logs (a rebuild would send
-- everything again); every write is idempotent, so a replayed batch adds nothing.
--
-- One row per endpoint, as its events left it; `failing_since` is the sender's (the first failed
-- attempt since the last success: the disabling clock).
CREATE TABLE IF NOT EXISTS {schema}.endpoints (
    id               uuid PRIMARY KEY,
    owner_id         uuid NOT NULL,
    url              text NOT NULL,
    events           text[] NOT NULL,
    secret           text NOT NULL,
    status           text NOT NULL CHECK (status IN ('active', 'disabled', 'deleted')),
    disabled_reason  text,
    disabled_at      timestamptz,
    created_at       timestamptz NOT NULL,
    version          integer NOT NULL,
    failing_since    timestamptz,
    last_success_at  timestamptz
);
CREATE INDEX IF NOT EXISTS endpoints_owner
    ON {schema}.endpoints (owner_id, created_at DESC, id DESC) WHERE status <> 'deleted';
-- Every event that becomes a webhook message, by its stable message id (msg_<uuid5 of the
-- upstream application and notification id>): what is sent, and what a new endpoint of the
-- same owner catches up from if it was registered before the event but projected after it.
CREATE TABLE IF NOT EXISTS {schema}.events (
    message_id   text PRIMARY KEY,
    owner_id     uuid NOT NULL,
    event_type   text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS events_owner ON {schema}.events (owner_id, occurred_at);
-- One row per (endpoint, message) to send, and one per redelivery of it. `sequence` is the
-- order an endpoint's messages are sent in (one at a time: the oldest undelivered first).
CREATE TABLE IF NOT EXISTS {schema}.deliveries (
    sequence          bigserial PRIMARY KEY,
    endpoint_id       uuid NOT NULL,
    message_id        text NOT NULL,
    event_type        text NOT NULL,
    occurred_at       timestamptz NOT NULL,
    redelivery        boolean NOT NULL DEFAULT false,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'failing', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    last_status_code  integer,
    last_error        text,
    last_attempt_at   timestamptz,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_once
    ON {schema}.deliveries (endpoint_id, message_id) WHERE NOT redelivery;
CREATE INDEX IF NOT EXISTS deliveries_open
    ON {schema}.deliveries (endpoint_id, sequence) WHERE status IN ('pending', 'failing');
CREATE INDEX IF NOT EXISTS deliveries_history ON {schema}.deliveries (endpoint_id, sequence DESC);
-- Per generation and run, what their webhook messages need that the ending event lacks.
CREATE TABLE IF NOT EXISTS {schema}.subjects (
    id          uuid PRIMARY KEY,
    owner_id    uuid NOT NULL,
    data        jsonb NOT NULL,
    version     integer NOT NULL
);
