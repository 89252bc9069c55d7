-- on_running (docs/architecture.md, "What happens when an answer is already running"): answers
-- that wait for their turn in the database, and what a reservation reads of the running ones.
-- (Numbered 0007: 0006 is the usage and finish reason migration, written on another branch.)

-- When the answer was put in the queue: reserved under on_running = enqueue while earlier answers
-- of its project ran. NULL for every other answer. A *queued* answer is pending with no
-- lease_owner: no worker holds it, so the reaper never touches it, and it costs nothing while it
-- waits. A worker claims it (sets lease_owner) when every earlier answer of the project has ended.
ALTER TABLE messages ADD COLUMN queued_at timestamptz;

-- The running answers of a project, in order: what reject, enqueue and interrupt look at, and
-- what says whether a queued answer's turn has come. Only running rows are indexed.
CREATE INDEX messages_running_by_project ON messages (project_id, sequence)
    WHERE status IN ('pending', 'streaming');

-- The running (pending or streaming, queued included) answers of project p below sequence
-- `below`, in order, as the reservation of a request under `policy` needs them: none for
-- concurrent and interrupt (they do not wait), nor for a repeated client_request_id `key` (the
-- request finds its own pair, whatever the policy); under reject, an abort naming the newest
-- one (server/db.py turns it into a 409 answer_running).
--
-- VOLATILE, and plpgsql (never inlined), so that its query takes a snapshot of its own: called
-- by reserve_pair once that statement holds the project's row lock, it sees every reservation of
-- the project that committed before, which the statement's own snapshot (taken before it waited
-- for the lock) may not.
CREATE FUNCTION orderly_running_answers(p uuid, below bigint, policy text, key text)
RETURNS uuid[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    running uuid[];
    newest record;
BEGIN
    IF policy NOT IN ('reject', 'enqueue') THEN
        RETURN '{}';
    END IF;
    IF key IS NOT NULL AND EXISTS (
        SELECT 1 FROM messages WHERE project_id = p AND client_request_id = key
    ) THEN
        RETURN '{}';
    END IF;
    SELECT array_agg(id ORDER BY sequence) INTO running
    FROM messages
    WHERE project_id = p AND sequence < below AND status IN ('pending', 'streaming');
    IF running IS NULL THEN
        RETURN '{}';
    END IF;
    IF policy = 'reject' THEN
        SELECT id, sequence INTO newest
        FROM messages WHERE project_id = p AND id = running[cardinality(running)];
        RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'answer_running',
            DETAIL = newest.id::text || ' ' || newest.sequence::text;
    END IF;
    RETURN running;
END
$$;

-- Called by the statements that end answers (the flush, close_messages): NOTIFY orderly_queue
-- with those of `projects` that have a queued answer, whose turn may have come (server/queue.py).
-- Comma-separated project ids, or '*' (look at every project) past what a payload can hold.
-- VOLATILE: a snapshot of its own, taken when it is called (after the ending statement has
-- locked its users' rows), not when the ending statement began.
CREATE FUNCTION orderly_queue_hint(projects uuid[]) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_notify('orderly_queue',
                     CASE WHEN count(*) > 150 THEN '*' ELSE string_agg(b.id::text, ',') END)
    FROM (SELECT DISTINCT id FROM unnest(projects) AS u (id)) AS b
    WHERE EXISTS (
        SELECT 1 FROM messages AS q
        WHERE q.project_id = b.id AND q.status = 'pending' AND q.lease_owner IS NULL
    )
    HAVING count(*) > 0
$$;
