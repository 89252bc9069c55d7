-- Every query of the service, each under a "-- name: <name>" header, loaded once by server/db.py.
-- Every statement on a per-project table filters by project_id (see docs/scaling.md).
-- Message rows are always returned with the same columns, in this order:
--   id, project_id, sequence, role, kind, content, status, image_urls, client_request_id,
--   created_by, created_at, updated_at, error_code, error_message, last_event_id,
--   prompt_tokens, completion_tokens, finish_reason
-- Reads go through message_view, where a running message's content and last event id come from
-- its stored log (sql/migrations/0005_event_chunks_and_heartbeats.sql); but not a listener's
-- (start_pair, log_tail), which must cost what is new, not what the answer holds.

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
-- The on_running policy is applied here too, against the running answers as they are once the
-- project row is locked (orderly_running_answers, sql/migrations/0007_queued_answers.sql): under
-- reject, an earlier running answer aborts the statement; under enqueue, an answer behind running
-- ones is *queued*: no lease_owner (no worker holds it; the reaper leaves it alone), queued_at
-- set, and its log starts with a `queued` progress event (event 2) written with the rows, so that
-- it exists before any worker can claim the answer. (A queued placeholder comes back with
-- last_event_id 2.)
-- The worker's heartbeat must be alive, as for the flush and claim_queued: an answer reserved
-- under an expired identity would be held by nobody, and the reaper would end it `interrupted`
-- on a live worker; orderly_refuse aborts the statement (503 worker_unavailable) instead.
-- Lock order (docs/architecture.md, "Lock order"): the project's row (p), then the user's row (u
-- reads p, so it runs after it); no existing message's row or key (the rows and the chunk it
-- inserts are new). The foreign key checks of its inserts, at the end of the statement, take
-- FOR KEY SHARE of rows it already holds.
-- $1 project, $2 owner, $3 content, $4 image_urls, $5 client_request_id, $6 the worker that
-- writes the answer (its heartbeat holds it), $7 the user's cap on running generations, $8 the
-- on_running policy
WITH p AS (
    UPDATE projects SET last_sequence = last_sequence + 2
    WHERE id = $1 AND owner_id = $2
    RETURNING last_sequence, orderly_uuid7() AS user_id, orderly_uuid7() AS assistant_id,
              cardinality(orderly_running_answers(id, last_sequence - 1, $8::text, $5::text)) AS ahead
), u AS (
    UPDATE users
    SET running_generations = running_generations + 1
    WHERE id = $2 AND EXISTS (SELECT 1 FROM p)
      AND CASE WHEN running_generations < $7 THEN true
               ELSE orderly_refuse('too_many_running_generations') END
      AND CASE WHEN EXISTS (SELECT 1 FROM workers AS w WHERE w.id = $6 AND w.expires_at > now())
               THEN true ELSE orderly_refuse('heartbeat_expired') END
), queued AS (
    INSERT INTO event_chunks (project_id, message_id, first_event_id, kinds, data)
    -- (The compact JSON of events.progress_data; no colon before a letter, which pgbench
    -- would read as a variable: bench/pgbench.py runs this statement.)
    SELECT $1::uuid, p.assistant_id, 2, 'p',
           '{"stage":"queued","message":"Queued behind ' || p.ahead || ' earlier answer'
           || CASE WHEN p.ahead = 1 THEN '' ELSE 's' END || '","percent":' || 'null}'
    FROM p
    WHERE p.ahead > 0
)
INSERT INTO messages AS m (project_id, id, sequence, role, content, status, image_urls,
                           client_request_id, created_by, last_event_id, lease_owner, queued_at)
SELECT $1::uuid, p.user_id, p.last_sequence - 1, 'user', $3::text, 'success',
       $4::text[], $5::text, $2::uuid, 0, NULL::uuid, NULL::timestamptz
FROM p
UNION ALL
SELECT $1::uuid, p.assistant_id, p.last_sequence, 'assistant', '', 'pending', '{}'::text[],
       $5::text, $2::uuid, CASE WHEN p.ahead > 0 THEN 2 ELSE 1 END,
       CASE WHEN p.ahead > 0 THEN NULL ELSE $6::uuid END,
       CASE WHEN p.ahead > 0 THEN now() END
FROM p
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason;

-- name: pair_by_request_id
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM message_view AS m JOIN projects AS p ON p.id = m.project_id
WHERE m.project_id = $1 AND p.owner_id = $2 AND m.client_request_id = $3
ORDER BY m.sequence;

-- name: get_message
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM message_view AS m JOIN projects AS p ON p.id = m.project_id
WHERE m.project_id = $1 AND m.id = $2 AND p.owner_id = $3;

-- name: get_pair_of_assistant
-- The user message and the assistant message of one generation (sequences 2k-1, 2k).
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM message_view AS m
WHERE m.project_id = $1 AND m.sequence IN ($2 - 1, $2)
ORDER BY m.sequence;

-- name: start_pair
-- The pair of a generation as its start event shows it (events.start_event: the answer as
-- created, pending and empty), from the rows themselves: not message_view, which would assemble
-- the running answer's content from its stored deltas only for it to be dropped. $1 project,
-- $2 the assistant message's sequence
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.role = 'assistant' THEN '' ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens,
       m.finish_reason
FROM messages AS m
WHERE m.project_id = $1 AND m.sequence IN ($2 - 1, $2)
ORDER BY m.sequence;

-- name: history_latest
-- One row per message, or one row of NULLs for an empty project, or no row when the project is
-- not the caller's: the ownership check costs no extra round trip.
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM message_view WHERE project_id = $1 ORDER BY sequence DESC LIMIT $3
) AS m ON true
WHERE p.id = $1 AND p.owner_id = $2;

-- name: history_before
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM message_view WHERE project_id = $1 AND sequence < $4
    ORDER BY sequence DESC LIMIT $3
) AS m ON true
WHERE p.id = $1 AND p.owner_id = $2;

-- name: history_after
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM message_view WHERE project_id = $1 AND sequence > $4
    ORDER BY sequence ASC LIMIT $3
) AS m ON true
WHERE p.id = $1 AND p.owner_id = $2;

-- name: stream_target
-- An assistant message's stream being opened (GET .../events, a listener's first request and
-- every reconnect): what the handler checks (the caller owns it, its role, how far its log goes)
-- without message_view, which would assemble a running answer's whole content for nothing (the
-- follow reads from the cursor on). A running answer's last event id is its last stored chunk's,
-- one step down the primary key (1: only `start`); the content, only a terminal row's (running:
-- empty, not read). $1 project, $2 message, $3 the caller
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN '' ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN coalesce((
                SELECT c.first_event_id + length(c.kinds) - 1
                FROM event_chunks AS c
                WHERE c.project_id = m.project_id AND c.message_id = m.id AND c.kinds <> 't'
                ORDER BY c.first_event_id DESC
                LIMIT 1
            ), 1)
            ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM messages AS m JOIN projects AS p ON p.id = m.project_id
WHERE m.project_id = $1 AND m.id = $2 AND p.owner_id = $3;

-- name: message_by_id
-- Internal reads (following a log); callers have already checked ownership.
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM message_view AS m
WHERE m.project_id = $1 AND m.id = $2;

-- name: chunks_after
-- The stored events of a log after event $3: from the chunk that holds event $3 + 1 on, a chunk
-- (the events of one flush) per row, $4 rows at most. Terminal markers are not events.
SELECT first_event_id, kinds, data
FROM event_chunks
WHERE project_id = $1 AND message_id = $2 AND kinds <> 't'
  AND first_event_id >= (
      SELECT coalesce(max(first_event_id), 0) FROM event_chunks
      WHERE project_id = $1 AND message_id = $2 AND first_event_id <= $3 + 1
  )
ORDER BY first_event_id
LIMIT $4;

-- name: log_tail
-- A listener's read of a log it follows from the table (another worker's answer, a finished one):
-- the message's state from its own row, and the chunks after event $3, in one statement (one
-- snapshot: a row read as terminal comes with every chunk stored before its end). It costs what
-- is new, not what the answer holds: no message_view, so no stored delta is parsed and no chunk
-- is scanned to find the last event id (a running row's last_event_id is not read; the caller
-- takes the events themselves); the content only of a terminal row, where it is final; and the
-- chunks from the one holding event $3 + 1 on, a range of the primary key (as chunks_after), $4
-- at most, as arrays (one row, whatever the number of chunks; NULL when there are none). No
-- row: no such message. $1 project, $2 message, $3 the cursor, $4 chunks at most
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('success', 'error', 'cancelled') THEN m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens,
       m.finish_reason, c.first_event_ids, c.kinds, c.data
FROM messages AS m
CROSS JOIN LATERAL (
    SELECT array_agg(n.first_event_id ORDER BY n.first_event_id) AS first_event_ids,
           array_agg(n.kinds ORDER BY n.first_event_id) AS kinds,
           array_agg(n.data ORDER BY n.first_event_id) AS data
    FROM (
        SELECT e.first_event_id, e.kinds, e.data
        FROM event_chunks AS e
        WHERE e.project_id = $1 AND e.message_id = $2 AND e.kinds <> 't'
          AND e.first_event_id >= coalesce((
              -- The chunk that holds event $3 + 1: one step down the index. (Not max(), which
              -- the planner does not turn into this here, and which reads every earlier chunk.)
              SELECT first_event_id FROM event_chunks
              WHERE project_id = $1 AND message_id = $2 AND first_event_id <= $3 + 1
              ORDER BY first_event_id DESC
              LIMIT 1
          ), 0)
        ORDER BY e.first_event_id
        LIMIT $4
    ) AS n
) AS c
WHERE m.project_id = $1 AND m.id = $2;

-- name: flush
-- One batched write for running generations of a worker: the new events of each, a chunk per
-- message, and a message row only where its status changes (its first events: streaming; its
-- end: the final status, content, terminal event id, usage and finish reason, and the terminal
-- marker that claims the terminal event's id). A running answer's content is never rewritten: it
-- is its stored log (message_view). The terminal state and the log are written in one statement.
-- Most messages of a flush only gain a chunk: they are named by their chunks alone, and only the
-- messages whose status changes come with a row of changes (fewer parameters to send).
-- Fenced: only messages leased to this worker, still running, while its heartbeat has not
-- expired. Against an end written meanwhile by cancel or the reaper, the primary key of
-- event_chunks is the fence (see the migration 0005): their terminal marker takes the id this
-- write's first chunk starts at, and whichever insert comes second fails; when the flush comes
-- second, the statement fails on the key (WriteConflict), the flusher sends it again at once, and
-- then finds the message ended.
-- Lock order (docs/architecture.md, "Lock order"): the rows of the messages whose status changes
-- (changed), then the keys of the chunks (chunks), then the users' rows in id order (finished_by),
-- the order of every statement that ends answers. Each of these steps reads the one before
-- (a count in a one-time filter): the executor runs a step to completion before the next one
-- produces its first row, whatever the placement of the CTEs. A flush of chunks only locks no
-- message row and no user's row.
-- Idempotent: a flush whose COMMIT went through but whose reply was lost is sent again with the
-- same chunks (a chunk, once formed, never changes): those already stored are skipped, and a row
-- that already holds exactly the terminal state of its item counts as written, untouched.
-- (NOT EXISTS rather than ON CONFLICT: a speculative insert costs an extra WAL record per row.)
-- Returns the messages it wrote (or found already written), with updated_at where the row
-- changed (for the terminal event).
-- $1 the worker; chunks: $2 project ids, $3 message ids, $4 first event ids, $5 kinds, $6 data;
-- changes: $7 project ids, $8 ids, $9 statuses, $10 final contents (NULL but at the end),
-- $11 last event ids (the terminal event's at the end), $12 error codes, $13 error messages,
-- $14 prompt tokens, $15 completion tokens, $16 finish reasons (NULL but at a successful end)
WITH new_chunks AS (
    SELECT *
    FROM unnest($2::uuid[], $3::uuid[], $4::integer[], $5::text[], $6::text[])
        AS c (project_id, message_id, first_event_id, kinds, data)
), changes AS (
    SELECT *
    FROM unnest($7::uuid[], $8::uuid[], $9::text[], $10::text[], $11::integer[], $12::text[],
                $13::text[], $14::integer[], $15::integer[], $16::text[])
        AS b (project_id, id, status, content, last_event_id, error_code, error_message,
              prompt_tokens, completion_tokens, finish_reason)
), batch AS (
    SELECT project_id, message_id AS id FROM new_chunks
    UNION
    SELECT project_id, id FROM changes
), held AS (
    SELECT m.project_id, m.id, m.status AS was, b.status, b.last_event_id
    FROM messages AS m
    JOIN batch AS t ON m.project_id = t.project_id AND m.id = t.id
    LEFT JOIN changes AS b ON b.project_id = t.project_id AND b.id = t.id
    WHERE m.lease_owner = $1 AND m.status IN ('pending', 'streaming')
      AND EXISTS (SELECT 1 FROM workers AS w WHERE w.id = $1 AND w.expires_at > now())
), changed AS (
    -- 1. The rows of the messages whose status changes (none in a flush of chunks only).
    UPDATE messages AS m
    SET status = b.status,
        content = coalesce(b.content, m.content),
        last_event_id = b.last_event_id,
        error_code = b.error_code,
        error_message = b.error_message,
        prompt_tokens = b.prompt_tokens,
        completion_tokens = b.completion_tokens,
        finish_reason = b.finish_reason,
        updated_at = now(),
        lease_owner = CASE WHEN b.status IN ('pending', 'streaming') THEN m.lease_owner END
    FROM changes AS b JOIN held AS h ON h.project_id = b.project_id AND h.id = b.id
    WHERE m.project_id = b.project_id AND m.id = b.id AND b.status <> h.was
      AND m.lease_owner = $1 AND m.status IN ('pending', 'streaming')
    RETURNING m.project_id, m.id, m.updated_at, m.status, m.created_by
), chunks AS (
    -- 2. The keys of the chunks and terminal markers, once every row of (1) is locked.
    INSERT INTO event_chunks (project_id, message_id, first_event_id, kinds, data)
    SELECT c.project_id, c.message_id, c.first_event_id, c.kinds, c.data
    FROM (
        SELECT * FROM new_chunks
        UNION ALL
        SELECT h.project_id, h.id, h.last_event_id, 't', ''
        FROM held AS h WHERE h.status IN ('success', 'error', 'cancelled')
    ) AS c
    JOIN held AS h ON h.project_id = c.project_id AND h.id = c.message_id
    WHERE NOT EXISTS (
        SELECT 1 FROM event_chunks AS e
        WHERE e.project_id = c.project_id AND e.message_id = c.message_id
          AND e.first_event_id = c.first_event_id
    )
      AND (SELECT count(*) FROM changed) >= 0
    RETURNING 1
), already AS (
    -- The retry of a terminal write that committed: this statement's snapshot already shows it.
    SELECT m.id, m.updated_at
    FROM messages AS m JOIN changes AS b ON m.project_id = b.project_id AND m.id = b.id
    WHERE b.status IN ('success', 'error', 'cancelled')
      AND m.status = b.status AND m.last_event_id = b.last_event_id
      AND m.error_code IS NOT DISTINCT FROM b.error_code
), finished_by AS (
    -- 3. The users' rows, in id order (two workers' flushes lock the same users), once every
    -- key of (2) is taken. FOR NO KEY UPDATE, the lock of the UPDATE below: it does not conflict
    -- with the FOR KEY SHARE of a foreign key check (a reservation's insert into messages, a
    -- new project or token of the user).
    SELECT id FROM users
    WHERE id IN (SELECT created_by FROM changed WHERE status IN ('success', 'error', 'cancelled'))
      AND (SELECT count(*) FROM chunks) >= 0
    ORDER BY id
    FOR NO KEY UPDATE
), released AS (
    UPDATE users AS u SET running_generations = greatest(0, u.running_generations - f.n)
    FROM (
        SELECT created_by, count(*) AS n FROM changed
        WHERE status IN ('success', 'error', 'cancelled') GROUP BY created_by
    ) AS f
    WHERE u.id = f.created_by AND u.id IN (SELECT id FROM finished_by)
    RETURNING u.id
), queue_hint AS (
    -- An answer that ended may have been the last before a queued answer's turn: NOTIFY the
    -- projects that have one (server/queue.py). Looked at once the users' rows are locked
    -- (released): an answer queued behind one of these by a reservation (which locks its user's
    -- row too) is then either committed and seen, or committed after this statement, and then
    -- its own worker finds that the turn came.
    SELECT orderly_queue_hint(array_agg(DISTINCT project_id))
    FROM changed
    WHERE status IN ('success', 'error', 'cancelled') AND (SELECT count(*) FROM released) >= 0
    HAVING count(*) > 0
), hint AS (
    -- One small NOTIFY per flush, ids only (payloads are capped at 8000 bytes: '*' = re-read all).
    SELECT pg_notify('orderly_events',
                     CASE WHEN count(*) > 150 THEN '*' ELSE string_agg(id::text, ',') END)
    FROM held
    HAVING count(*) > 0
)
SELECT h.id, c.updated_at FROM held AS h
LEFT JOIN changed AS c ON c.project_id = h.project_id AND c.id = h.id
LEFT JOIN hint ON true
LEFT JOIN queue_hint ON true
UNION ALL
SELECT a.id, a.updated_at FROM already AS a;

-- name: register_worker
-- $1 the worker, $2 lease seconds, $3 host, $4 process id
INSERT INTO workers (id, expires_at, host, pid)
VALUES ($1, now() + $2::float8 * interval '1 second', $3, $4);

-- name: renew_worker
-- Extend the heartbeat, never one that already expired (its messages may be reaped by now).
UPDATE workers SET expires_at = now() + $2::float8 * interval '1 second'
WHERE id = $1 AND expires_at > now()
RETURNING id;

-- name: expire_worker
-- A worker that stops: whatever it still leases is for the reapers to close now.
UPDATE workers SET expires_at = now() WHERE id = $1;

-- name: next_expiry
-- Seconds until the earliest heartbeat of another worker expires (negative: already expired).
SELECT extract(epoch FROM min(expires_at) - now())::float8 FROM workers WHERE id <> $1;

-- name: orphans
-- The reaper's work: running messages whose worker stopped (its heartbeat expired, or it has
-- none: a worker from before heartbeats). Spans projects by design (a periodic sweep).
SELECT m.project_id, m.id
FROM messages AS m
WHERE m.status IN ('pending', 'streaming') AND m.lease_owner IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM workers AS w WHERE w.id = m.lease_owner AND w.expires_at > now()
  )
LIMIT $1;

-- name: close_message
-- End a running assistant message (cancel, interrupt, the reaper, a message that cannot be
-- written) with the content of its stored deltas, its terminal event's id claimed in
-- event_chunks; release its user's running count; tell the queue and every worker (the writer
-- stops its generator). One message per call, in the lock order of every statement that ends
-- answers: its row, the key, its user's row (orderly_close, sql/migrations/0009_lock_order.sql).
-- No row when it is not running (or not found, or not the caller's).
-- $1 project, $2 message, $3 status, $4 error code, $5 error message, $6 the caller, or NULL for
-- internal ends (the caller must own the project)
SELECT c.id, c.project_id, c.sequence, c.role, c.kind, c.content, c.status, c.image_urls,
       c.client_request_id, c.created_by, c.created_at, c.updated_at, c.error_code,
       c.error_message, c.last_event_id, c.prompt_tokens, c.completion_tokens, c.finish_reason
FROM orderly_close($1, $2, $3, $4, $5, $6) AS c;

-- name: running_before
-- The running answers of project $1 (queued ones included) below sequence $2: what an
-- interrupting request cancels, newest first (Store.interrupt says why).
SELECT project_id, id
FROM messages
WHERE project_id = $1 AND sequence < $2 AND status IN ('pending', 'streaming')
ORDER BY sequence DESC;

-- name: claim_queued
-- Claim the queued answers of these projects whose turn has come (every earlier answer of the
-- project has ended) for worker $1, while its heartbeat lives. SKIP LOCKED: two workers never
-- claim the same answer, and neither waits for the other. A claimed answer is leased like any
-- running one (the reaper ends it if its worker dies). $2 project ids, $3 how many at most
WITH turn AS (
    SELECT q.project_id, q.id
    FROM unnest($2::uuid[]) AS b (project_id)
    JOIN messages AS q ON q.project_id = b.project_id
    WHERE q.status = 'pending' AND q.lease_owner IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM messages AS e
          WHERE e.project_id = q.project_id AND e.sequence < q.sequence
            AND e.status IN ('pending', 'streaming')
      )
      AND EXISTS (SELECT 1 FROM workers AS w WHERE w.id = $1 AND w.expires_at > now())
    LIMIT $3
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE messages AS m SET lease_owner = $1
FROM turn AS t
WHERE m.project_id = t.project_id AND m.id = t.id
  AND m.status = 'pending' AND m.lease_owner IS NULL
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens,
          m.finish_reason, extract(epoch FROM now() - m.queued_at)::float8 AS waited;

-- name: claim_queued_anywhere
-- The slow poll's claim_queued: the queued answers of every project whose turn has come. Spans
-- projects by design (a periodic sweep). $1 the worker, $2 how many at most
WITH turn AS (
    SELECT q.project_id, q.id
    FROM messages AS q
    WHERE q.status = 'pending' AND q.lease_owner IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM messages AS e
          WHERE e.project_id = q.project_id AND e.sequence < q.sequence
            AND e.status IN ('pending', 'streaming')
      )
      AND EXISTS (SELECT 1 FROM workers AS w WHERE w.id = $1 AND w.expires_at > now())
    LIMIT $2
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE messages AS m SET lease_owner = $1
FROM turn AS t
WHERE m.project_id = t.project_id AND m.id = t.id
  AND m.status = 'pending' AND m.lease_owner IS NULL
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens,
          m.finish_reason, extract(epoch FROM now() - m.queued_at)::float8 AS waited;

-- name: leased_to
-- Answers leased to worker $1 that have not started writing (pending): the worker compares them
-- with what it runs, to start one whose start it missed: a claim of a queued answer, or a
-- reservation, whose reply it never got (the statement committed, the connection broke). Spans
-- projects by design (the worker's own answers).
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM messages AS m
WHERE m.lease_owner = $1 AND m.status = 'pending';

-- name: release_claims
-- A draining worker gives back queued answers it claimed and has not started: queued again, and
-- their turn has come, so every worker is told. $1 the worker, $2 project ids, $3 message ids
WITH released AS (
    UPDATE messages AS m SET lease_owner = NULL
    FROM unnest($2::uuid[], $3::uuid[]) AS b (project_id, id)
    WHERE m.project_id = b.project_id AND m.id = b.id
      AND m.lease_owner = $1 AND m.status = 'pending' AND m.queued_at IS NOT NULL
    RETURNING m.project_id, m.id
)
SELECT id, pg_notify('orderly_queue', project_id::text) FROM released;

-- name: held_among
-- Which of these messages still run under worker $1: after its LISTEN connection reconnects, a
-- worker stops those of its running answers that someone else ended meanwhile (their NOTIFY
-- orderly_cancel went unheard). $2 project ids, $3 message ids
SELECT m.id
FROM messages AS m
JOIN unnest($2::uuid[], $3::uuid[]) AS b (project_id, id)
    ON m.project_id = b.project_id AND m.id = b.id
WHERE m.lease_owner = $1 AND m.status IN ('pending', 'streaming');

-- name: forget_workers
-- Heartbeats that expired and lead nothing any more. Spans projects by design.
DELETE FROM workers AS w
WHERE w.expires_at < now()
  AND NOT EXISTS (
      SELECT 1 FROM messages AS m
      WHERE m.lease_owner = w.id AND m.status IN ('pending', 'streaming')
  );

-- name: recent_history
-- The context of a generation: the latest $3 whole turns before it, in sequence order. A turn is
-- a successful answer and the user message just before it (user 2k-1, assistant 2k), so the
-- context alternates user, assistant, ... and ends on an answer: a turn whose answer failed, was
-- cancelled or has not ended yet is left out whole, its question too. The user message is
-- checked by role, not parity: projects upgraded from the legacy layout can have pairs at
-- (2k, 2k+1). The index on (project_id, sequence) is walked backwards from $2, two lookups per
-- turn taken. $1 project, $2 the new user message's sequence, $3 turns
WITH turns AS (
    SELECT a.sequence
    FROM messages AS a
    WHERE a.project_id = $1 AND a.sequence < $2 AND a.role = 'assistant' AND a.status = 'success'
      AND EXISTS (
          SELECT 1 FROM messages AS u
          WHERE u.project_id = $1 AND u.sequence = a.sequence - 1 AND u.role = 'user'
      )
    ORDER BY a.sequence DESC
    LIMIT $3
)
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM turns AS t
JOIN messages AS m ON m.project_id = $1 AND m.sequence IN (t.sequence - 1, t.sequence)
ORDER BY m.sequence;

-- name: prune_events
-- Retention: drop the stored events of finished messages, a batch of chunks at a time (their
-- terminal markers too: an ended message's row is its end). The message rows keep the final content; a pruned log is answered with its terminal
-- event alone. Spans projects by design (a periodic sweep). $1 retention seconds, $2 batch size
WITH old AS (
    SELECT c.project_id, c.message_id, c.first_event_id
    FROM event_chunks AS c
    JOIN messages AS m ON m.project_id = c.project_id AND m.id = c.message_id
    WHERE c.created_at < now() - $1::float8 * interval '1 second'
      AND m.status IN ('success', 'error', 'cancelled')
    LIMIT $2
), gone AS (
    DELETE FROM event_chunks AS d
    USING old
    WHERE d.project_id = old.project_id AND d.message_id = old.message_id
      AND d.first_event_id = old.first_event_id
    RETURNING CASE WHEN d.kinds = 't' THEN 0 ELSE length(d.kinds) END AS events
)
SELECT count(*) AS chunks, coalesce(sum(events), 0)::bigint AS events FROM gone;

-- name: lock_project_for_delete
-- DELETE /api/projects/{id}, first in its transaction: the project's row, locked (the ownership
-- check is the WHERE: no row, not found). It is the lock reserve_pair's UPDATE takes, so no
-- answer is reserved in the project until the delete commits. $1 project, $2 owner
SELECT id, last_sequence FROM projects WHERE id = $1 AND owner_id = $2 FOR UPDATE;

-- name: project_running
-- How many answers of project $1 still run (queued ones included), once the delete has
-- cancelled them: a statement of its own, whose snapshot sees the cancel that committed.
SELECT count(*) FROM messages WHERE project_id = $1 AND status IN ('pending', 'streaming');

-- name: delete_project_events
-- Every stored event (and terminal marker) of a project's messages. $1 project
DELETE FROM event_chunks WHERE project_id = $1;

-- name: delete_project_messages
-- $1 project
DELETE FROM messages WHERE project_id = $1;

-- name: delete_project
-- $1 project, $2 owner
DELETE FROM projects WHERE id = $1 AND owner_id = $2
RETURNING id;
