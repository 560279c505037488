-- Users and API keys. Identity is plain state, not an event-sourced context: nothing reacts to
-- it and nothing needs its history; keys are stored as SHA-256 hashes only.
CREATE TABLE IF NOT EXISTS identity.users (
    id          uuid PRIMARY KEY,
    email       text NOT NULL,
    admin       boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON identity.users (lower(email));

CREATE TABLE IF NOT EXISTS identity.api_keys (
    key_hash    bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES identity.users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_user_id ON identity.api_keys (user_id);
