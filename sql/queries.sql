-- Every query of the service, each under a "-- name: <name>" header, loaded once by server/db.py.
-- Every statement on a per-project table filters by project_id (see docs/scaling.md).
-- Message rows are always returned with the same columns, in this order:
--   id, project_id, sequence, role, kind, content, status, image_urls, client_request_id,
--   created_by, created_at, updated_at, error_code, error_message, last_event_id

-- name: user_for_token_hash
SELECT u.id, u.username
FROM api_tokens AS t JOIN users AS u ON u.id = t.user_id
WHERE t.token_hash = $1 AND t.revoked_at IS NULL;

-- name: upsert_user
INSERT INTO users (username) VALUES ($1)
ON CONFLICT (username) DO UPDATE SET username = excluded.username
RETURNING id;

-- name: insert_token
INSERT INTO api_tokens (user_id, token_hash) VALUES ($1, $2);

-- name: revoke_token
UPDATE api_tokens SET revoked_at = now()
WHERE token_hash = $1 AND revoked_at IS NULL
RETURNING id;

-- name: revoke_user_tokens
UPDATE api_tokens AS t SET revoked_at = now()
FROM users AS u
WHERE u.id = t.user_id AND u.username = $1 AND t.revoked_at IS NULL
RETURNING t.id;

-- name: count_users
SELECT count(*) FROM users;

-- name: insert_project
INSERT INTO projects (owner_id, title) VALUES ($1, $2)
RETURNING id, title, last_sequence, created_at;

-- name: list_projects
SELECT id, title, last_sequence, created_at
FROM projects
WHERE owner_id = $1
ORDER BY created_at DESC, id DESC
LIMIT $2;

-- name: get_project
SELECT id, title, last_sequence, created_at
FROM projects
WHERE id = $1 AND owner_id = $2;

-- name: reserve_pair
-- The whole reservation in one statement: the project row lock is held for this statement only,
-- the ownership check is the UPDATE's WHERE (no row: not found), and a failed insert rolls the
-- counter back with it, so sequences never have gaps. The user's running count goes up in the
-- same statement; over the cap, orderly_refuse aborts it all (nothing reserved, nothing written).
-- $1 project, $2 owner, $3 content, $4 image_urls, $5 client_request_id, $6 lease owner,
-- $7 lease seconds, $8 the user's cap on running generations
WITH p AS (
    UPDATE projects SET last_sequence = last_sequence + 2
    WHERE id = $1 AND owner_id = $2
    RETURNING last_sequence
), u AS (
    UPDATE users
    SET running_generations = running_generations + 1
    WHERE id = $2 AND EXISTS (SELECT 1 FROM p)
      AND CASE WHEN running_generations < $8 THEN true
               ELSE orderly_refuse('too_many_running_generations') END
)
INSERT INTO messages AS m (project_id, sequence, role, content, status, image_urls,
                           client_request_id, created_by, last_event_id, lease_owner,
                           lease_expires_at)
SELECT $1::uuid, p.last_sequence - 1, 'user', $3::text, 'success', $4::text[], $5::text,
       $2::uuid, 0, NULL::uuid, NULL::timestamptz
FROM p
UNION ALL
SELECT $1::uuid, p.last_sequence, 'assistant', '', 'pending', '{}'::text[], $5::text, $2::uuid,
       1, $6::uuid, now() + $7::float8 * interval '1 second'
FROM p
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id;

-- name: pair_by_request_id
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM messages AS m JOIN projects AS p ON p.id = m.project_id
WHERE m.project_id = $1 AND p.owner_id = $2 AND m.client_request_id = $3
ORDER BY m.sequence;

-- name: get_message
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM messages AS m JOIN projects AS p ON p.id = m.project_id
WHERE m.project_id = $1 AND m.id = $2 AND p.owner_id = $3;

-- name: get_pair_of_assistant
-- The user message and the assistant message of one generation (sequences 2k-1, 2k).
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM messages AS m
WHERE m.project_id = $1 AND m.sequence IN ($2 - 1, $2)
ORDER BY m.sequence;

-- name: history_latest
-- One row per message, or one row of NULLs for an empty project, or no row when the project is
-- not the caller's: the ownership check costs no extra round trip.
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM messages WHERE project_id = $1 ORDER BY sequence DESC LIMIT $3
) AS m ON true
WHERE p.id = $1 AND p.owner_id = $2;

-- name: history_before
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM messages WHERE project_id = $1 AND sequence < $4
    ORDER BY sequence DESC LIMIT $3
) AS m ON true
WHERE p.id = $1 AND p.owner_id = $2;

-- name: history_after
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM messages WHERE project_id = $1 AND sequence > $4
    ORDER BY sequence ASC LIMIT $3
) AS m ON true
WHERE p.id = $1 AND p.owner_id = $2;

-- name: events_after
SELECT event_id, name, data
FROM message_events
WHERE project_id = $1 AND message_id = $2 AND event_id > $3
ORDER BY event_id
LIMIT $4;

-- name: flush
-- One batched write for all running generations of a worker: their new events and their message
-- rows (status, partial or final content, last event id) in one statement, so the terminal state
-- and the log can never disagree. Fenced: only rows this worker still leases and that are not yet
-- terminal are written, and the events of any other row are dropped with them.
-- Idempotent: a flush whose COMMIT went through but whose reply was lost is sent again as it was
-- (or with more events); stored events are skipped (ON CONFLICT DO NOTHING), and a row that
-- already holds exactly the terminal state of its item counts as written without being touched.
-- $1 lease owner; messages: $2 project ids, $3 ids, $4 statuses, $5 contents, $6 last event ids,
-- $7 error codes, $8 error messages; events: $9 project ids, $10 message ids, $11 event ids,
-- $12 names, $13 data
WITH batch AS (
    SELECT *
    FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::integer[], $7::text[],
                $8::text[])
        AS b (project_id, id, status, content, last_event_id, error_code, error_message)
), written AS (
    UPDATE messages AS m
    SET status = b.status,
        content = b.content,
        last_event_id = b.last_event_id,
        error_code = b.error_code,
        error_message = b.error_message,
        updated_at = now(),
        lease_owner = CASE WHEN b.status IN ('pending', 'streaming') THEN m.lease_owner END,
        lease_expires_at = CASE WHEN b.status IN ('pending', 'streaming')
                                THEN m.lease_expires_at END
    FROM batch AS b
    WHERE m.project_id = b.project_id AND m.id = b.id
      AND m.lease_owner = $1 AND m.status IN ('pending', 'streaming')
    RETURNING m.project_id, m.id, m.updated_at, m.status, m.created_by
), already AS (
    -- The retry of a terminal write that committed: this statement's snapshot already shows it.
    SELECT m.id, m.updated_at
    FROM messages AS m JOIN batch AS b ON m.project_id = b.project_id AND m.id = b.id
    WHERE b.status IN ('success', 'error', 'cancelled')
      AND m.status = b.status AND m.last_event_id = b.last_event_id
      AND m.error_code IS NOT DISTINCT FROM b.error_code
), finished_by AS (
    -- Lock the users in id order, so that two workers' flushes cannot deadlock on them.
    SELECT id FROM users
    WHERE id IN (SELECT created_by FROM written WHERE status IN ('success', 'error', 'cancelled'))
    ORDER BY id
    FOR UPDATE
), released AS (
    UPDATE users AS u SET running_generations = greatest(0, u.running_generations - f.n)
    FROM (
        SELECT created_by, count(*) AS n FROM written
        WHERE status IN ('success', 'error', 'cancelled') GROUP BY created_by
    ) AS f
    WHERE u.id = f.created_by AND u.id IN (SELECT id FROM finished_by)
), events AS (
    INSERT INTO message_events (project_id, message_id, event_id, name, data)
    SELECT e.project_id, e.message_id, e.event_id, e.name, e.data
    FROM unnest($9::uuid[], $10::uuid[], $11::integer[], $12::text[], $13::text[])
        AS e (project_id, message_id, event_id, name, data)
    JOIN written AS w ON w.project_id = e.project_id AND w.id = e.message_id
    ON CONFLICT (project_id, message_id, event_id) DO NOTHING
), hint AS (
    -- One small NOTIFY per flush, ids only (payloads are capped at 8000 bytes: '*' = re-read all).
    SELECT pg_notify('orderly_events',
                     CASE WHEN count(*) > 150 THEN '*' ELSE string_agg(id::text, ',') END)
    FROM written
    HAVING count(*) > 0
)
SELECT w.id, w.updated_at FROM written AS w LEFT JOIN hint ON true
UNION ALL
SELECT a.id, a.updated_at FROM already AS a;

-- name: message_by_id
-- Internal reads (following a log); callers have already checked ownership.
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM messages AS m
WHERE m.project_id = $1 AND m.id = $2;

-- name: renew_leases
-- $1 lease owner, $2 lease seconds, $3 project ids, $4 message ids
UPDATE messages AS m
SET lease_expires_at = now() + $2::float8 * interval '1 second'
FROM unnest($3::uuid[], $4::uuid[]) AS b (project_id, id)
WHERE m.project_id = b.project_id AND m.id = b.id
  AND m.lease_owner = $1 AND m.status IN ('pending', 'streaming')
RETURNING m.id;

-- name: reap_expired
-- Close the running messages whose owner stopped renewing its lease: error 'interrupted', or
-- 'cancelled' when a cancel was asked for. The terminal event is derived from the row, so
-- bumping last_event_id appends it. SKIP LOCKED lets every worker reap without waiting on others.
WITH expired AS (
    SELECT project_id, id
    FROM messages
    WHERE status IN ('pending', 'streaming') AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), reaped AS (
    UPDATE messages AS m
    SET status = 'error',
        error_code = 'interrupted',
        error_message = 'the answer was interrupted: the worker writing it stopped',
        last_event_id = m.last_event_id + 1,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM expired AS e
    WHERE m.project_id = e.project_id AND m.id = e.id
    RETURNING m.id, m.created_by
), reaped_for AS (
    SELECT id FROM users WHERE id IN (SELECT created_by FROM reaped) ORDER BY id FOR UPDATE
), released AS (
    UPDATE users AS u SET running_generations = greatest(0, u.running_generations - r.n)
    FROM (SELECT created_by, count(*) AS n FROM reaped GROUP BY created_by) AS r
    WHERE u.id = r.created_by AND u.id IN (SELECT id FROM reaped_for)
)
SELECT id, pg_notify('orderly_events', id::text) FROM reaped;

-- name: cancel_message
-- Cancel ends the message here and now, with the content written so far; the owner learns of it
-- through NOTIFY (and, failing that, through its next fenced flush) and stops its generator.
-- $1 project, $2 message, $3 owner (the project's)
WITH cancelled AS (
    UPDATE messages AS m
    SET status = 'cancelled',
        last_event_id = m.last_event_id + 1,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM projects AS p
    WHERE m.project_id = $1 AND m.id = $2 AND p.id = m.project_id AND p.owner_id = $3
      AND m.role = 'assistant' AND m.status IN ('pending', 'streaming')
    RETURNING m.*
), released AS (
    UPDATE users AS u SET running_generations = greatest(0, u.running_generations - 1)
    FROM cancelled AS c
    WHERE u.id = c.created_by
)
SELECT c.id, c.project_id, c.sequence, c.role, c.kind, c.content, c.status, c.image_urls,
       c.client_request_id, c.created_by, c.created_at, c.updated_at, c.error_code,
       c.error_message, c.last_event_id,
       pg_notify('orderly_cancel', c.id::text), pg_notify('orderly_events', c.id::text)
FROM cancelled AS c;

-- name: recent_history
-- The context of a generation: the finished messages before it, newest $3, in sequence order.
-- Never a placeholder, a running answer, or a failed or cancelled one.
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id
FROM (
    SELECT * FROM messages
    WHERE project_id = $1 AND sequence < $2 AND status = 'success'
    ORDER BY sequence DESC
    LIMIT $3
) AS m
ORDER BY m.sequence;

-- name: prune_events
-- Retention: drop the stored events of finished messages, oldest first, a batch at a time. The
-- message rows keep the final content; a pruned log is answered with its terminal event alone.
-- Spans projects by design (a periodic sweep). $1 retention seconds, $2 batch size
WITH old AS (
    SELECT e.project_id, e.message_id, e.event_id
    FROM message_events AS e
    JOIN messages AS m ON m.project_id = e.project_id AND m.id = e.message_id
    WHERE e.created_at < now() - $1::float8 * interval '1 second'
      AND m.status IN ('success', 'error', 'cancelled')
    ORDER BY e.created_at
    LIMIT $2
)
DELETE FROM message_events AS d
USING old
WHERE d.project_id = old.project_id AND d.message_id = old.message_id
  AND d.event_id = old.event_id;
