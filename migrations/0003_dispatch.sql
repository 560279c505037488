-- Where the dispatcher has got to in each application's notification log.
CREATE TABLE IF NOT EXISTS reactions.dispatch_positions (
    application_name text PRIMARY KEY,
    notification_id  bigint NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
