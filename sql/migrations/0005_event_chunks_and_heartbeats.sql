-- The write path whose cost per event is a constant (docs/architecture.md, "The write path"):
-- events are stored a few to a row, a running answer's content is no longer rewritten on every
-- flush, and a worker holds its running answers through one heartbeat row instead of one lease
-- per message, renewed without touching the rows the flush writes.

-- One row per running worker process. Its running messages (messages.lease_owner = id) are its
-- own while expires_at is in the future; the reaper of any worker closes the others'.
CREATE TABLE workers (
    id          uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    host        text NOT NULL DEFAULT '',
    pid         integer NOT NULL DEFAULT 0
);

-- Events 2 .. N-1 of an assistant message (start and the terminal event are projections of the
-- message rows), a few consecutive ones per row: what one flush wrote for the message. A row
-- costs about 300 bytes of WAL whatever it holds (heap tuple, index entry, page splits), so the
-- events of a flush share one. The row holds events first_event_id .. first_event_id +
-- length(kinds) - 1.
--
-- The primary key is also the fence between a message's writer and whoever ends it: every end
-- (the writer's own, cancel, the reaper) inserts a terminal marker (kinds 't') at the id after
-- the last stored event, and the writer's next chunk starts at that very id. Whichever insert
-- comes second finds the key taken, so no event is ever stored after the terminal one, and no
-- flush takes a row lock on the message (which would cost WAL on every flush).
-- No foreign key: a per-row RI check would cost a query and a row lock per chunk. Messages are
-- never deleted.
CREATE TABLE event_chunks (
    project_id      uuid NOT NULL,
    message_id      uuid NOT NULL,
    first_event_id  integer NOT NULL CHECK (first_event_id > 1),
    -- One letter per event: d (delta) or p (progress); or t alone: the terminal marker.
    kinds           text NOT NULL CHECK (kinds ~ '^([dp]+|t)$'),
    -- The events' data lines (compact JSON, which has no raw newline), joined by newlines.
    data            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, message_id, first_event_id)
);

-- Retention deletes by age; rows arrive in time order, so a BRIN index is enough and costs
-- almost nothing per insert.
CREATE INDEX event_chunks_created ON event_chunks USING brin (created_at);

INSERT INTO event_chunks (project_id, message_id, first_event_id, kinds, data, created_at)
SELECT project_id, message_id, event_id, CASE name WHEN 'delta' THEN 'd' ELSE 'p' END, data,
       created_at
FROM message_events;

-- The terminal markers of the messages that have ended.
INSERT INTO event_chunks (project_id, message_id, first_event_id, kinds, data)
SELECT project_id, id, last_event_id, 't', ''
FROM messages
WHERE role = 'assistant' AND status IN ('success', 'error', 'cancelled') AND last_event_id > 1;

DROP TABLE message_events;

-- Leases are the workers' heartbeats now; a running message names its worker.
DROP INDEX messages_open_leases;
ALTER TABLE messages DROP COLUMN lease_expires_at;
CREATE INDEX messages_running_by_owner ON messages (lease_owner)
    WHERE status IN ('pending', 'streaming');

-- The id of the last stored event of a message's log (1 when only `start` exists).
CREATE FUNCTION orderly_last_stored_event(p uuid, m uuid) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(first_event_id + length(kinds) - 1), 1)
    FROM event_chunks
    WHERE project_id = p AND message_id = m AND kinds <> 't'
$$;

-- The stored delta texts of a message, joined in order: the content its listeners have seen. A
-- running message's content is this; cancel and the reaper write it as the final content.
CREATE FUNCTION orderly_stored_content(p uuid, m uuid) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n), '')
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.project_id = p AND c.message_id = m AND e.kind = 'd'
$$;

-- A message as every read sees it: a running message's content and last event id come from its
-- stored log (its row is written only when its status changes).
CREATE VIEW message_view AS
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming')
            THEN orderly_stored_content(m.project_id, m.id) ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN orderly_last_stored_event(m.project_id, m.id)
            ELSE m.last_event_id END AS last_event_id
FROM messages AS m;
