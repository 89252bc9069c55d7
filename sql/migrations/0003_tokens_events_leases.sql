-- API tokens (hashes only), the per-message event log, and the lease index of the reaper.

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id),
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE INDEX projects_owner_created ON projects (owner_id, created_at DESC, id DESC);

-- Events 2 .. N-1 of an assistant message (event 1, start, and the terminal event are projections
-- of the message rows; see docs/architecture.md). Keyed by project first, like every per-project
-- table, so that the schema can be distributed by project_id.
CREATE TABLE message_events (
    project_id  uuid NOT NULL,
    message_id  uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    event_id    integer NOT NULL CHECK (event_id > 1),
    name        text NOT NULL CHECK (name IN ('progress', 'delta')),
    data        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, message_id, event_id)
);

CREATE INDEX message_events_created ON message_events (created_at);

-- The reaper's work list: only unfinished messages are indexed.
CREATE INDEX messages_open_leases ON messages (lease_expires_at)
    WHERE status IN ('pending', 'streaming');
