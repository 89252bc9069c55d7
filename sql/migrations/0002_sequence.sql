-- Per-project sequences replace timestamp ordering.
-- Backfill: ROW_NUMBER() over (created_at, id), so that rows written in the same instant get a
-- deterministic order; each project's counter starts at its maximum.

ALTER TABLE projects ADD COLUMN last_sequence bigint NOT NULL DEFAULT 0;

ALTER TABLE messages
    ADD COLUMN sequence           bigint,
    ADD COLUMN kind               text NOT NULL DEFAULT 'message',
    ADD COLUMN image_urls         text[] NOT NULL DEFAULT '{}',
    ADD COLUMN client_request_id  text,
    ADD COLUMN updated_at         timestamptz,
    ADD COLUMN error_code         text,
    ADD COLUMN error_message      text,
    -- Id of the last event of the assistant message's log (1 = start, see docs/architecture.md).
    ADD COLUMN last_event_id      integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_owner        uuid,
    ADD COLUMN lease_expires_at   timestamptz;

UPDATE messages AS m
SET sequence = r.rn
FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY project_id ORDER BY created_at, id) AS rn
    FROM messages
) AS r
WHERE m.id = r.id;

UPDATE messages AS m SET created_by = p.owner_id
FROM projects AS p
WHERE m.project_id = p.id AND m.created_by IS NULL;

-- The old app lost half-written answers: whatever it left unfinished can never finish now.
UPDATE messages
SET status = 'error', error_code = 'interrupted',
    error_message = 'the answer was interrupted before the upgrade'
WHERE status NOT IN ('success', 'error', 'cancelled');

UPDATE messages SET updated_at = created_at;

UPDATE projects AS p
SET last_sequence = COALESCE((SELECT max(m.sequence) FROM messages AS m WHERE m.project_id = p.id), 0);

ALTER TABLE messages
    ALTER COLUMN sequence SET NOT NULL,
    ALTER COLUMN created_by SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL,
    ALTER COLUMN updated_at SET DEFAULT now(),
    ADD CONSTRAINT messages_project_sequence_key UNIQUE (project_id, sequence),
    ADD CONSTRAINT messages_sequence_positive CHECK (sequence > 0),
    ADD CONSTRAINT messages_role_check CHECK (role IN ('user', 'assistant')),
    ADD CONSTRAINT messages_kind_check CHECK (kind IN ('message')),
    ADD CONSTRAINT messages_status_check
        CHECK (status IN ('pending', 'streaming', 'success', 'error', 'cancelled')),
    ADD CONSTRAINT messages_user_status_check CHECK (role = 'assistant' OR status = 'success'),
    ADD CONSTRAINT messages_error_check CHECK ((status = 'error') = (error_code IS NOT NULL)),
    ADD CONSTRAINT messages_client_request_id_check
        CHECK (client_request_id ~ '^[A-Za-z0-9_-]{1,64}$');

-- The idempotency key: one pair per (project, key). A project has exactly one owner, so this is
-- also "per user and project".
CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (project_id, client_request_id, role)
    WHERE client_request_id IS NOT NULL;

DROP INDEX messages_project_created_at;
