-- Every query of the service, each under a "-- name: <name>" header, loaded once by server/db.py.
-- Every statement on a per-user table (projects, messages, event_chunks, user_running) filters by
-- its owner, the distribution column on Citus (docs/scaling.md): messages.created_by (a project
-- has one owner), event_chunks.owner_id, projects.owner_id, user_running.user_id. So each
-- statement that serves a request runs on one node; the few that span owners by design say so.
-- No statement calls a function that reads a table (on Citus it would run on a shard, where that
-- fails): close_message is a function called alone, on the coordinator.
-- Message rows are always returned with the same columns, in this order:
--   id, project_id, sequence, role, kind, content, status, image_urls, client_request_id,
--   created_by, created_at, updated_at, error_code, error_message, last_event_id,
--   prompt_tokens, completion_tokens, finish_reason, reasoning, reasoning_tokens, reasoning_ms,
--   tool_calls, tool_results
-- A running message's content, reasoning and last event id come from its stored log: message_view
-- (sql/migrations/0010_citus_layout.sql) shows how, and the reads below spell it out, with the
-- owner as a parameter in the log's subquery too (on Citus a view's correlated owner would not
-- let the statement be routed to one shard: it would run on all of them). A listener's reads
-- (start_pair, log_tail) do not assemble the log at all: they must cost what is new, not what
-- the answer holds.

-- name: is_distributed
-- Whether this database is a Citus cluster (server/db.py asks once, when its pool opens).
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');

-- name: shards_of
-- The shard of each owner's rows on Citus (server/store.py groups a batch by it, so that each
-- statement of the batch is routed to one node). $1 owners
SELECT o AS owner_id, get_shard_id_for_distribution_column('messages', o) AS shard
FROM unnest($1::uuid[]) AS o;

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

-- name: insert_chat_project
-- A chat's project, made by its first message under the id the chat's id names (server/chat.py);
-- nothing when the caller made it meanwhile.
INSERT INTO projects (owner_id, id, title) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
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
WHERE owner_id = $2 AND id = $1;

-- name: rename_project
-- The project's new title. It waits for the project's row lock like a reservation (which moves
-- last_sequence, never the title), and keeps whatever the reservations wrote. No row: not the
-- owner's project. $1 project, $2 owner, $3 title
UPDATE projects SET title = $3
WHERE owner_id = $2 AND id = $1
RETURNING id, title, last_sequence, created_at;

-- name: reserve_pair
-- The whole reservation in one statement, on the owner's shard: the project row lock is held for
-- this statement only, the ownership check is the UPDATE's WHERE (no row: not found), and a failed
-- insert rolls the counter back with it, so sequences never have gaps. The user's running count
-- goes up in the same statement (an upsert: a user's row is made by its first reservation); over
-- the cap it is not raised, and the statement aborts (nothing reserved, nothing written).
-- The on_running policy is applied here too, against the running answers of the project (none
-- for concurrent and interrupt, nor for a repeated client_request_id: the request finds its own
-- pair): under reject, an earlier running answer aborts the statement; under enqueue, an answer
-- behind running ones is *queued*: no lease_owner (no worker holds it; the reaper leaves it
-- alone), queued_at set, and its log starts with a `queued` progress event (event 2) written
-- with the rows, so that it exists before any worker can claim the answer. (A queued placeholder
-- comes back with last_event_id 2.)
-- The running answers are the ones this statement's snapshot shows, plus every pair reserved by
-- a reservation that committed while this one waited for the project's row lock: the UPDATE then
-- sees the project's latest last_sequence, and the pairs between the snapshot's last_sequence
-- (seen) and it are counted as running (they began a moment ago). Such a one is named by its
-- sequence alone ("- <sequence>"; server/store.py reads its id).
-- The order of the refusals: a repeated key first (the user message's insert fails on
-- messages_idempotency_key before the assistant's row is looked at), then the cap (u, read by
-- the assistant's row), then reject.
-- The worker's heartbeat must be alive, as for the flush and claim_queued: an answer reserved
-- under an expired identity would be held by nobody, and the reaper would end it `interrupted`
-- on a live worker; orderly_refuse aborts the statement (503 worker_unavailable) instead.
-- Lock order (docs/architecture.md, "Lock order"): the project's row (p), then the user's running
-- count (u reads a, which reads p); no existing message's row or key (the rows and the chunk it
-- inserts are new).
-- The ids are named in a (Citus refuses volatile functions in RETURNING).
-- $1 project, $2 owner, $3 content, $4 image_urls, $5 client_request_id, $6 the worker that
-- writes the answer (its heartbeat holds it), $7 the user's cap on running generations, $8 the
-- on_running policy, $9 a tool-result turn's results (NULL: a user message), $10 tools, $11
-- tool_choice (both NULL in a tool-result turn: those of the turn whose calls it answers).
-- A tool-result turn answers every call of the project's latest answer, which must have ended
-- with tool calls: checked here, under the project's row lock (answered). Refused before the
-- cap; never for a repeated key (the insert finds the existing pair).
WITH p AS (
    UPDATE projects SET last_sequence = last_sequence + 2
    WHERE owner_id = $2 AND id = $1
    RETURNING last_sequence
), seen AS (
    SELECT s.last_sequence, $8::text IN ('reject', 'enqueue') AND NOT k.repeat AS waits, k.repeat
    FROM projects AS s
    CROSS JOIN LATERAL (
        SELECT EXISTS (
            SELECT 1 FROM messages AS k
            WHERE k.created_by = $2 AND k.project_id = $1 AND k.client_request_id = $5::text
        ) AS repeat
    ) AS k
    WHERE s.owner_id = $2 AND s.id = $1
), answered AS (
    -- A tool-result turn ($9): the project's latest answer, the message just below the pair
    -- this statement reserves (p: the locked row's latest last_sequence), if it ended with tool
    -- calls; and the input message of its turn (its tools). An answer reserved by a
    -- reservation that committed while this one waited for the lock is that message: this
    -- statement's snapshot does not show it (on Citus, a later step's may: it is running),
    -- either way no row.
    SELECT l.tool_calls, i.tools, i.tool_choice
    FROM p
    JOIN messages AS l
        ON l.created_by = $2 AND l.project_id = $1 AND l.sequence = p.last_sequence - 2
       AND l.is_current
    LEFT JOIN messages AS i
        ON i.created_by = $2 AND i.project_id = $1 AND i.sequence = p.last_sequence - 3
    WHERE $9::jsonb IS NOT NULL AND l.role = 'assistant' AND l.status = 'success'
      AND l.finish_reason = 'tool_calls' AND l.tool_calls IS NOT NULL
), running AS (
    SELECT count(*) AS n, max(r.sequence) AS newest_sequence,
           (array_agg(r.id ORDER BY r.sequence DESC))[1] AS newest_id
    FROM messages AS r
    WHERE r.created_by = $2 AND r.project_id = $1 AND r.status IN ('pending', 'streaming')
      AND (SELECT waits FROM seen)
), a AS (
    SELECT p.last_sequence, orderly_uuid7() AS user_id, orderly_uuid7() AS assistant_id,
           CASE WHEN s.waits THEN r.n + greatest(0, (p.last_sequence - 2 - s.last_sequence) / 2)
                ELSE 0 END AS ahead,
           CASE WHEN p.last_sequence - 2 > s.last_sequence THEN '- ' || (p.last_sequence - 2)
                ELSE r.newest_id || ' ' || r.newest_sequence END AS newest,
           CASE WHEN $9::jsonb IS NULL OR s.repeat THEN NULL
                WHEN NOT EXISTS (SELECT 1 FROM answered) THEN 'tool_calls_not_pending'
                WHEN (SELECT array_agg(c ->> 'id' ORDER BY c ->> 'id')
                      FROM answered, jsonb_array_elements(answered.tool_calls) AS c)
                     IS DISTINCT FROM
                     (SELECT array_agg(r ->> 'tool_call_id' ORDER BY r ->> 'tool_call_id')
                      FROM jsonb_array_elements($9::jsonb) AS r)
                THEN 'tool_results_mismatch' END AS tool_refusal,
           CASE WHEN $9::jsonb IS NULL OR $10::jsonb IS NOT NULL OR $11::jsonb IS NOT NULL
                THEN $10::jsonb ELSE (SELECT tools FROM answered) END AS tools,
           CASE WHEN $9::jsonb IS NULL OR $10::jsonb IS NOT NULL OR $11::jsonb IS NOT NULL
                THEN $11::jsonb ELSE (SELECT tool_choice FROM answered) END AS tool_choice
    FROM p, seen AS s, running AS r
), u AS (
    INSERT INTO user_running AS c (user_id, running_generations)
    SELECT $2, 1 FROM a
    WHERE $7 >= 1
      AND CASE WHEN EXISTS (SELECT 1 FROM workers AS w WHERE w.id = $6 AND w.expires_at > now())
               THEN true ELSE orderly_refuse('heartbeat_expired') END
    ON CONFLICT (user_id) DO UPDATE SET running_generations = c.running_generations + 1
    WHERE c.running_generations < $7
    RETURNING 1
), queued AS (
    INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data)
    SELECT $2::uuid, a.assistant_id, 2, 'p',
           '{"stage":"queued","message":"Queued behind ' || a.ahead || ' earlier answer'
           || CASE WHEN a.ahead = 1 THEN '' ELSE 's' END || '","percent":' || 'null}'
    FROM a
    WHERE a.ahead > 0
)
INSERT INTO messages AS m (project_id, id, sequence, role, content, status, image_urls,
                           client_request_id, created_by, last_event_id, lease_owner, queued_at,
                           tools, tool_choice, tool_results)
SELECT $1::uuid, a.user_id, a.last_sequence - 1,
       CASE WHEN $9::jsonb IS NULL THEN 'user' ELSE 'tool' END, $3::text, 'success',
       $4::text[], $5::text, $2::uuid, 0, NULL::uuid, NULL::timestamptz,
       a.tools, a.tool_choice, $9::jsonb
FROM a
UNION ALL
SELECT $1::uuid, a.assistant_id, a.last_sequence, 'assistant', '', 'pending', '{}'::text[],
       $5::text, $2::uuid, CASE WHEN a.ahead > 0 THEN 2 ELSE 1 END,
       CASE WHEN a.ahead > 0 THEN NULL ELSE $6::uuid END,
       CASE WHEN a.ahead > 0 THEN now() END, NULL::jsonb, NULL::jsonb, NULL::jsonb
FROM a
WHERE CASE WHEN a.tool_refusal IS NOT NULL THEN orderly_refuse(a.tool_refusal)
           WHEN NOT EXISTS (SELECT 1 FROM u) THEN orderly_refuse('too_many_running_generations')
           WHEN $8::text = 'reject' AND a.ahead > 0
           THEN orderly_refuse('answer_running', a.newest) ELSE true END
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason,
          m.reasoning, m.reasoning_tokens, m.reasoning_ms,
          m.tool_calls, m.tool_results, m.tools, m.tool_choice;

-- name: pair_by_request_id
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results
FROM messages AS m
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $2 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE m.created_by = $2 AND m.project_id = $1 AND m.client_request_id = $3
ORDER BY m.sequence;

-- name: get_message
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.variant,
       CASE WHEN m.role = 'assistant'
            THEN (SELECT count(*) FROM messages AS v
                  WHERE v.created_by = $3 AND v.project_id = m.project_id
                    AND v.sequence = m.sequence)
            ELSE 1 END AS variants
FROM messages AS m
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $3 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE m.created_by = $3 AND m.project_id = $1 AND m.id = $2;

-- name: get_pair_of_assistant
-- The input message (user or tool) and the assistant message of one generation (sequences
-- 2k-1, 2k), with the input's tools (a queued answer starts from this read). $3 owner, $4 the
-- answer (a variant of 2k: regenerate), or NULL for the current variant of $2
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.tools, m.tool_choice,
       m.variant
FROM messages AS m
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $3 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE m.created_by = $3 AND m.project_id = $1 AND m.sequence IN ($2 - 1, $2)
  AND CASE WHEN m.role = 'assistant' AND $4::uuid IS NOT NULL THEN m.id = $4 ELSE m.is_current END
ORDER BY m.sequence;

-- name: start_pair
-- The pair of a generation as its start event shows it (events.start_event: the answer as
-- created, pending and empty), from the rows themselves: not message_view, which would assemble
-- the running answer's content from its stored deltas only for it to be dropped. $1 project,
-- $2 the assistant message's sequence, $3 owner, $4 the assistant message (a variant of $2)
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.role = 'assistant' THEN '' ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens,
       m.finish_reason, NULL::text AS reasoning, m.reasoning_tokens, m.reasoning_ms,
       m.tool_calls, m.tool_results, m.variant
FROM messages AS m
WHERE m.created_by = $3 AND m.project_id = $1
  AND (m.sequence = $2 - 1 AND m.is_current OR m.id = $4)
ORDER BY m.sequence;

-- name: history_latest
-- One row per message, or one row of NULLs for an empty project, or no row when the project is
-- not the caller's: the ownership check costs no extra round trip.
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.variant,
       CASE WHEN m.role = 'assistant'
            THEN (SELECT count(*) FROM messages AS v
                  WHERE v.created_by = $2 AND v.project_id = m.project_id
                    AND v.sequence = m.sequence)
            ELSE 1 END AS variants
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM messages
    WHERE created_by = $2 AND project_id = $1 AND is_current
    ORDER BY sequence DESC LIMIT $3
) AS m ON true
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $2 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE p.owner_id = $2 AND p.id = $1;

-- name: history_before
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.variant,
       CASE WHEN m.role = 'assistant'
            THEN (SELECT count(*) FROM messages AS v
                  WHERE v.created_by = $2 AND v.project_id = m.project_id
                    AND v.sequence = m.sequence)
            ELSE 1 END AS variants
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM messages
    WHERE created_by = $2 AND project_id = $1 AND sequence < $4 AND is_current
    ORDER BY sequence DESC LIMIT $3
) AS m ON true
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $2 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE p.owner_id = $2 AND p.id = $1;

-- name: history_after
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.variant,
       CASE WHEN m.role = 'assistant'
            THEN (SELECT count(*) FROM messages AS v
                  WHERE v.created_by = $2 AND v.project_id = m.project_id
                    AND v.sequence = m.sequence)
            ELSE 1 END AS variants
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM messages
    WHERE created_by = $2 AND project_id = $1 AND sequence > $4 AND is_current
    ORDER BY sequence ASC LIMIT $3
) AS m ON true
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $2 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE p.owner_id = $2 AND p.id = $1;

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
                WHERE c.owner_id = $3 AND c.message_id = m.id AND c.kinds <> 't'
                ORDER BY c.first_event_id DESC
                LIMIT 1
            ), 1)
            ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN NULL ELSE m.reasoning END AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.variant
FROM messages AS m
WHERE m.created_by = $3 AND m.project_id = $1 AND m.id = $2;

-- name: message_by_id
-- Internal reads (following a log); callers have already checked ownership. $3 owner
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.variant
FROM messages AS m
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $3 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE m.created_by = $3 AND m.project_id = $1 AND m.id = $2;

-- name: chunks_after
-- The stored events of a log after event $3: from the chunk that holds event $3 + 1 on, a chunk
-- (the events of one flush) per row, $4 rows at most. Terminal markers are not events.
-- $1 the message's owner, $2 the message
SELECT first_event_id, kinds, data
FROM event_chunks
WHERE owner_id = $1 AND message_id = $2 AND kinds <> 't'
  AND first_event_id >= (
      SELECT coalesce(max(first_event_id), 0) FROM event_chunks
      WHERE owner_id = $1 AND message_id = $2 AND first_event_id <= $3 + 1
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
-- row: no such message. $1 project, $2 message, $3 the cursor, $4 chunks at most, $5 owner
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('success', 'error', 'cancelled') THEN m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens,
       m.finish_reason,
       CASE WHEN m.status IN ('success', 'error', 'cancelled') THEN m.reasoning END AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, c.first_event_ids,
       c.kinds, c.data
FROM messages AS m
CROSS JOIN LATERAL (
    SELECT array_agg(n.first_event_id ORDER BY n.first_event_id) AS first_event_ids,
           array_agg(n.kinds ORDER BY n.first_event_id) AS kinds,
           array_agg(n.data ORDER BY n.first_event_id) AS data
    FROM (
        SELECT e.first_event_id, e.kinds, e.data
        FROM event_chunks AS e
        WHERE e.owner_id = $5 AND e.message_id = $2 AND e.kinds <> 't'
          AND e.first_event_id >= coalesce((
              -- The chunk that holds event $3 + 1: one step down the index. (Not max(), which
              -- the planner does not turn into this here, and which reads every earlier chunk.)
              SELECT first_event_id FROM event_chunks
              WHERE owner_id = $5 AND message_id = $2 AND first_event_id <= $3 + 1
              ORDER BY first_event_id DESC
              LIMIT 1
          ), 0)
        ORDER BY e.first_event_id
        LIMIT $4
    ) AS n
) AS c
WHERE m.created_by = $5 AND m.project_id = $1 AND m.id = $2;

-- name: flush
-- One batched write for running generations of a worker, all of one shard (owners whose rows
-- live together; on one PostgreSQL, every owner: server/store.py groups them): the new events of
-- each, a chunk per message, and a message row only where its status changes (its first events:
-- streaming; its end: the final status, content, terminal event id, usage and finish reason, and
-- the terminal marker that claims the terminal event's id). A running answer's content is never
-- rewritten: it is its stored log (message_view). The terminal state and the log are written in
-- one statement.
-- Most messages of a flush only gain a chunk: they are named by their chunks alone, and only the
-- messages whose status changes come with a row of changes (fewer parameters to send).
-- Fenced: only messages leased to this worker, still running, while its heartbeat has not
-- expired. Against an end written meanwhile by cancel or the reaper, the primary key of
-- event_chunks is the fence (see the migration 0005): their terminal marker takes the id this
-- write's first chunk starts at, and whichever insert comes second fails; when the flush comes
-- second, the statement fails on the key (WriteConflict), the flusher sends it again at once, and
-- then finds the message ended.
-- Lock order (docs/architecture.md, "Lock order"): the rows of the messages whose status changes
-- (changed), then the keys of the chunks (chunks), then the users' running counts in id order
-- (finished_by), the order of every statement that ends answers. Each of these steps reads the
-- one before (a count in a one-time filter): the executor runs a step to completion before the
-- next one produces its first row, whatever the placement of the CTEs. A flush of chunks only
-- locks no message row and no user's row.
-- Idempotent: a flush whose COMMIT went through but whose reply was lost is sent again with the
-- same chunks (a chunk, once formed, never changes): those already stored are skipped, and a row
-- that already holds exactly the terminal state of its item counts as written, untouched.
-- (NOT EXISTS rather than ON CONFLICT: a speculative insert costs an extra WAL record per row.)
-- Every table is also filtered by owner = ANY($17): what lets Citus route the statement to the
-- one shard of those owners.
-- Returns the messages it wrote (or found already written), with updated_at where the row
-- changed (for the terminal event), and on every row the queue's hint: "owner/project" of the
-- projects whose answer ended here and that have a queued answer (NULL: none).
-- $1 the worker; chunks: $2 owners, $3 message ids, $4 first event ids, $5 kinds, $6 data;
-- changes: $7 owners, $8 ids, $9 statuses, $10 final contents (NULL but at the end),
-- $11 last event ids (the terminal event's at the end), $12 error codes, $13 error messages,
-- $14 prompt tokens, $15 completion tokens, $16 finish reasons (NULL but at a successful end);
-- $17 the batch's owners; $18 whether this statement sends the NOTIFYs (on Citus it may run on
-- another node than the one the workers LISTEN to: server/store.py sends them then);
-- $19 final reasonings (NULL but at the end, and when the model gave none), $20 reasoning tokens
-- (NULL but at a successful end that reported them), $21 how long the model reasoned (ms; NULL
-- but at the end of an answer that reasoned); $22 tool calls (JSON text, NULL but at a
-- successful end with calls)
WITH new_chunks AS (
    SELECT *
    FROM unnest($2::uuid[], $3::uuid[], $4::integer[], $5::text[], $6::text[])
        AS c (owner_id, message_id, first_event_id, kinds, data)
), changes AS (
    SELECT *
    FROM unnest($7::uuid[], $8::uuid[], $9::text[], $10::text[], $11::integer[], $12::text[],
                $13::text[], $14::integer[], $15::integer[], $16::text[], $19::text[],
                $20::integer[], $21::integer[], $22::text[])
        AS b (owner_id, id, status, content, last_event_id, error_code, error_message,
              prompt_tokens, completion_tokens, finish_reason, reasoning, reasoning_tokens,
              reasoning_ms, tool_calls)
), batch AS (
    SELECT owner_id, message_id AS id FROM new_chunks
    UNION
    SELECT owner_id, id FROM changes
), held AS (
    SELECT m.created_by AS owner_id, m.id, m.status AS was, b.status, b.last_event_id
    FROM messages AS m
    JOIN batch AS t ON m.created_by = t.owner_id AND m.id = t.id
    LEFT JOIN changes AS b ON b.owner_id = t.owner_id AND b.id = t.id
    WHERE m.created_by = ANY($17::uuid[])
      AND m.lease_owner = $1 AND m.status IN ('pending', 'streaming')
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
        reasoning = coalesce(b.reasoning, m.reasoning),
        reasoning_tokens = b.reasoning_tokens,
        reasoning_ms = b.reasoning_ms,
        tool_calls = b.tool_calls::jsonb,
        updated_at = now(),
        lease_owner = CASE WHEN b.status IN ('pending', 'streaming') THEN m.lease_owner END
    FROM changes AS b JOIN held AS h ON h.owner_id = b.owner_id AND h.id = b.id
    WHERE m.created_by = ANY($17::uuid[])
      AND m.created_by = b.owner_id AND m.id = b.id AND b.status <> h.was
      AND m.lease_owner = $1 AND m.status IN ('pending', 'streaming')
    RETURNING m.created_by, m.project_id, m.id, m.updated_at, m.status
), chunks AS (
    -- 2. The keys of the chunks and terminal markers, once every row of (1) is locked.
    INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data)
    SELECT c.owner_id, c.message_id, c.first_event_id, c.kinds, c.data
    FROM (
        SELECT * FROM new_chunks
        UNION ALL
        SELECT h.owner_id, h.id, h.last_event_id, 't', ''
        FROM held AS h WHERE h.status IN ('success', 'error', 'cancelled')
    ) AS c
    JOIN held AS h ON h.owner_id = c.owner_id AND h.id = c.message_id
    WHERE NOT EXISTS (
        SELECT 1 FROM event_chunks AS e
        WHERE e.owner_id = ANY($17::uuid[])
          AND e.owner_id = c.owner_id AND e.message_id = c.message_id
          AND e.first_event_id = c.first_event_id
    )
      AND (SELECT count(*) FROM changed) >= 0
    RETURNING 1
), already AS (
    -- The retry of a terminal write that committed: this statement's snapshot already shows it.
    SELECT m.id, m.updated_at
    FROM messages AS m JOIN changes AS b ON m.created_by = b.owner_id AND m.id = b.id
    WHERE m.created_by = ANY($17::uuid[])
      AND b.status IN ('success', 'error', 'cancelled')
      AND m.status = b.status AND m.last_event_id = b.last_event_id
      AND m.error_code IS NOT DISTINCT FROM b.error_code
), finished_by AS (
    -- 3. The users' running counts, in id order (two workers' flushes lock the same users),
    -- once every key of (2) is taken. A row locked after waiting is its latest version: its
    -- xmin says whether it changed since this statement's snapshot (queue_hint).
    -- (A subquery: Citus, which runs each CTE of this statement as a step of its own, reads
    -- back a locking query's rows in the wrong format.)
    SELECT l.user_id, l.version
    FROM (
        SELECT r.user_id, r.xmin::text AS version FROM user_running AS r
        WHERE r.user_id = ANY($17::uuid[])
          AND r.user_id IN (SELECT created_by FROM changed
                            WHERE status IN ('success', 'error', 'cancelled'))
          AND (SELECT count(*) FROM chunks) >= 0
        ORDER BY r.user_id
        FOR NO KEY UPDATE
    ) AS l
), released AS (
    UPDATE user_running AS u SET running_generations = greatest(0, u.running_generations - f.n)
    FROM (
        SELECT created_by, count(*) AS n FROM changed
        WHERE status IN ('success', 'error', 'cancelled') GROUP BY created_by
    ) AS f
    WHERE u.user_id = ANY($17::uuid[])
      AND u.user_id = f.created_by AND u.user_id IN (SELECT user_id FROM finished_by)
    RETURNING u.user_id
), queue_hint AS (
    -- An answer that ended may have been the last before a queued answer's turn: the projects
    -- that have one (server/queue.py), looked at once the users' rows are locked (released).
    -- This statement's snapshot may miss an answer queued by a reservation (which raises its
    -- user's running count) that committed after it began: when the user's count changed since
    -- the snapshot (finished_by's xmin), the ended projects of that user are hinted anyway. An
    -- answer queued later than the lock sees these ends itself (its own worker looks at once).
    SELECT CASE WHEN count(*) > 100 THEN '*'
                ELSE string_agg(DISTINCT c.created_by || '/' || c.project_id, ',') END AS projects
    FROM changed AS c
    WHERE c.status IN ('success', 'error', 'cancelled') AND (SELECT count(*) FROM released) >= 0
      AND (
          EXISTS (
              SELECT 1 FROM messages AS q
              WHERE q.created_by = ANY($17::uuid[])
                AND q.created_by = c.created_by AND q.project_id = c.project_id
                AND q.status = 'pending' AND q.lease_owner IS NULL
          )
          OR EXISTS (
              SELECT 1 FROM finished_by AS f JOIN user_running AS s ON s.user_id = f.user_id
              WHERE s.user_id = ANY($17::uuid[]) AND f.user_id = c.created_by
                AND s.xmin::text <> f.version
          )
      )
    HAVING count(*) > 0
), notified AS (
    -- One small NOTIFY per flush, ids only (payloads are capped at 8000 bytes: '*' = re-read all).
    -- (::text: Citus keeps each CTE's rows, and a void column cannot be kept.)
    SELECT pg_notify('orderly_events',
                     CASE WHEN count(*) > 150 THEN '*' ELSE string_agg(id::text, ',') END)::text,
           (SELECT pg_notify('orderly_queue', projects)::text FROM queue_hint)
    FROM held
    WHERE $18::boolean
    HAVING count(*) > 0
)
SELECT h.id, c.updated_at, q.projects AS queue_hint FROM held AS h
LEFT JOIN changed AS c ON c.created_by = h.owner_id AND c.id = h.id
LEFT JOIN queue_hint AS q ON true
LEFT JOIN notified ON true
UNION ALL
SELECT a.id, a.updated_at, NULL FROM already AS a;

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

-- name: notify
-- The NOTIFYs of statements that ran on another node than the one the workers LISTEN to (on
-- Citus, a statement routed to a worker node: its NOTIFY would stay there). $1 orderly_events'
-- payload, $2 orderly_queue's (either NULL: not sent)
SELECT pg_notify('orderly_events', $1) WHERE $1 IS NOT NULL
UNION ALL
SELECT pg_notify('orderly_queue', $2) WHERE $2 IS NOT NULL;

-- name: next_expiry
-- Seconds until the earliest heartbeat of another worker expires (negative: already expired).
SELECT extract(epoch FROM min(expires_at) - now())::float8 FROM workers WHERE id <> $1;

-- name: orphans
-- The reaper's work: running messages whose worker stopped (its heartbeat expired, or it has
-- none: a worker from before heartbeats). Spans owners by design (a periodic sweep).
SELECT m.created_by, m.project_id, m.id
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
-- answers: its row, the key, its user's row (orderly_close, sql/migrations/0010_citus_layout.sql).
-- No row when it is not running (or not found, or not the caller's). The function is the whole
-- statement: on Citus it runs on the coordinator (its statements are routed to the owner's node,
-- its NOTIFYs reach the listeners).
-- $1 owner, $2 project, $3 message, $4 status, $5 error code, $6 error message, $7 the caller,
-- or NULL for internal ends (the caller must be the owner)
SELECT c.id, c.project_id, c.sequence, c.role, c.kind, c.content, c.status, c.image_urls,
       c.client_request_id, c.created_by, c.created_at, c.updated_at, c.error_code,
       c.error_message, c.last_event_id, c.prompt_tokens, c.completion_tokens, c.finish_reason,
       c.reasoning, c.reasoning_tokens, c.reasoning_ms, c.tool_calls, c.tool_results
FROM orderly_close($1, $2, $3, $4, $5, $6, $7) AS c;

-- name: regenerate
-- A new variant of the project's latest answer, current from now on, reserved as reserve_pair
-- reserves a pair (the same refusals, on_running, the cap, the queue): orderly_regenerate,
-- sql/migrations/0014_variants.sql. Rows: the input message and the new variant (no row: not
-- the owner's project or message). On Citus it runs on the coordinator, as close_message does.
-- $1 owner, $2 project, $3 the answer (any variant of it), $4 client_request_id, $5 the worker,
-- $6 the user's cap, $7 on_running
SELECT r.id, r.project_id, r.sequence, r.role, r.kind, r.content, r.status, r.image_urls,
       r.client_request_id, r.created_by, r.created_at, r.updated_at, r.error_code,
       r.error_message, r.last_event_id, r.prompt_tokens, r.completion_tokens, r.finish_reason,
       r.reasoning, r.reasoning_tokens, r.reasoning_ms, r.tool_calls, r.tool_results, r.tools,
       r.tool_choice, r.variant
FROM orderly_regenerate($1, $2, $3, $4, $5, $6, $7) AS r;

-- name: choose_variant
-- Make a variant of the project's latest answer its current one (orderly_choose_variant, 0014).
-- No row: not the owner's project or message. $1 owner, $2 project, $3 the variant
SELECT c.id FROM orderly_choose_variant($1, $2, $3) AS c;

-- name: variants
-- The variants of the sequence of answer $2, in order, a running one's content and reasoning
-- assembled from its stored events (as get_message does); no row: not the caller's, or not an
-- answer. $1 project, $2 message, $3 the caller
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.content ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming')
            THEN s.last_event_id ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming') THEN s.reasoning ELSE m.reasoning END
           AS reasoning,
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results, m.variant,
       count(*) OVER () AS variants, m.is_current
FROM messages AS t
JOIN messages AS m
    ON m.created_by = t.created_by AND m.project_id = t.project_id AND m.sequence = t.sequence
LEFT JOIN LATERAL (
    SELECT coalesce(string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                        FILTER (WHERE e.kind = 'd'), '') AS content,
           string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
               FILTER (WHERE e.kind = 'r') AS reasoning,
           coalesce(max(c.first_event_id + length(c.kinds) - 1) FILTER (WHERE c.kinds <> 't'), 1)
               AS last_event_id
    FROM event_chunks AS c
    CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL), string_to_array(c.data, E'\n'))
        WITH ORDINALITY AS e (kind, data, n)
    WHERE c.owner_id = $3 AND c.message_id = m.id AND m.status IN ('pending', 'streaming')
) AS s ON true
WHERE t.created_by = $3 AND t.project_id = $1 AND t.id = $2 AND t.role = 'assistant'
  AND m.created_by = $3
ORDER BY m.variant;

-- name: running_before
-- The running answers of project $1 (queued ones included) before (sequence $2, variant $4):
-- what an interrupting request cancels (earlier variants of its own sequence too: regenerate),
-- newest first (Store.interrupt says why). $3 owner
SELECT project_id, id
FROM messages
WHERE created_by = $3 AND project_id = $1 AND sequence <= $2
  AND (sequence < $2 OR variant < $4) AND status IN ('pending', 'streaming')
ORDER BY sequence DESC, variant DESC;

-- name: claim_queued
-- Claim the queued answers of these projects whose turn has come (every earlier answer of the
-- project has ended: of an earlier sequence, or an earlier variant of its own) for worker $1, while its heartbeat lives. SKIP LOCKED: two workers never
-- claim the same answer, and neither waits for the other. A claimed answer is leased like any
-- running one (the reaper ends it if its worker dies). The projects are of owners of one shard
-- (server/store.py groups them). $2 owners, $3 project ids, $4 how many at most
WITH turn AS (
    -- (How long it waited is read here: Citus refuses now() in RETURNING.)
    SELECT q.created_by, q.id, extract(epoch FROM now() - q.queued_at)::float8 AS waited
    FROM unnest($2::uuid[], $3::uuid[]) AS b (owner_id, project_id)
    JOIN messages AS q ON q.created_by = b.owner_id AND q.project_id = b.project_id
    WHERE q.created_by = ANY($2::uuid[])
      AND q.status = 'pending' AND q.lease_owner IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM messages AS e
          WHERE e.created_by = ANY($2::uuid[])
            AND e.created_by = q.created_by AND e.project_id = q.project_id
            AND e.sequence <= q.sequence AND (e.sequence, e.variant) < (q.sequence, q.variant)
            AND e.status IN ('pending', 'streaming')
      )
      AND EXISTS (SELECT 1 FROM workers AS w WHERE w.id = $1 AND w.expires_at > now())
    LIMIT $4
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE messages AS m SET lease_owner = $1
FROM turn AS t
WHERE m.created_by = ANY($2::uuid[]) AND m.created_by = t.created_by AND m.id = t.id
  AND m.status = 'pending' AND m.lease_owner IS NULL
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens,
          m.finish_reason, m.reasoning, m.reasoning_tokens, m.reasoning_ms,
          m.tool_calls, m.tool_results, t.waited;

-- name: queued_projects
-- The slow poll: projects that have a queued answer whose turn has come; claim_queued then takes
-- them, a shard at a time (on Citus a statement that locks rows must be on one shard). Spans
-- owners by design (a periodic sweep). $1 how many at most
SELECT DISTINCT q.created_by AS owner_id, q.project_id
FROM messages AS q
WHERE q.status = 'pending' AND q.lease_owner IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM messages AS e
      WHERE e.created_by = q.created_by AND e.project_id = q.project_id
        AND e.sequence <= q.sequence AND (e.sequence, e.variant) < (q.sequence, q.variant)
        AND e.status IN ('pending', 'streaming')
  )
LIMIT $1;

-- name: leased_to
-- Answers leased to worker $1 that have not started writing (pending): the worker compares them
-- with what it runs, to start one whose start it missed: a claim of a queued answer, or a
-- reservation, whose reply it never got (the statement committed, the connection broke). Spans
-- owners by design (the worker's own answers).
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason,
       m.reasoning, m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results
FROM messages AS m
WHERE m.lease_owner = $1 AND m.status = 'pending';

-- name: release_claims
-- A draining worker gives back queued answers it claimed and has not started: queued again, and
-- their turn has come, so every worker is told (by this statement when $4, else by the caller
-- with `notify`: on Citus it runs on the owners' node). Owners of one shard.
-- $1 the worker, $2 owners, $3 message ids, $4 whether to NOTIFY here
WITH released AS (
    UPDATE messages AS m SET lease_owner = NULL
    FROM unnest($2::uuid[], $3::uuid[]) AS b (owner_id, id)
    WHERE m.created_by = ANY($2::uuid[]) AND m.created_by = b.owner_id AND m.id = b.id
      AND m.lease_owner = $1 AND m.status = 'pending' AND m.queued_at IS NOT NULL
    RETURNING m.created_by, m.project_id, m.id
)
SELECT id, created_by || '/' || project_id AS project,
       CASE WHEN $4::boolean
            THEN pg_notify('orderly_queue', created_by || '/' || project_id)::text END AS notified
FROM released;

-- name: held_among
-- Which of these messages still run under worker $1: after its LISTEN connection reconnects, a
-- worker stops those of its running answers that someone else ended meanwhile (their NOTIFY
-- orderly_cancel went unheard). Owners of one shard. $2 owners, $3 message ids
SELECT m.id
FROM messages AS m
JOIN unnest($2::uuid[], $3::uuid[]) AS b (owner_id, id)
    ON m.created_by = b.owner_id AND m.id = b.id
WHERE m.created_by = ANY($2::uuid[]) AND m.lease_owner = $1 AND m.status IN ('pending', 'streaming');

-- name: leading_workers
-- The workers that lead running answers. Spans owners by design (the reaper's sweep, with
-- forget_workers).
SELECT DISTINCT lease_owner
FROM messages
WHERE status IN ('pending', 'streaming') AND lease_owner IS NOT NULL;

-- name: forget_workers
-- Heartbeats that expired and lead nothing any more ($1: leading_workers, read before: an expired
-- worker gains no answer, a reservation and a claim need a live heartbeat). Two statements: on
-- Citus a write to a reference table cannot read a distributed one.
DELETE FROM workers AS w
WHERE w.expires_at < now() AND w.id <> ALL($1::uuid[]);

-- name: recent_history
-- The context of a generation: the latest $3 whole turns before sequence $2, in sequence order.
-- A turn is a successful answer (its sequence's current variant) and the input message just before it (user or tool 2k-1,
-- assistant 2k): a turn whose answer failed, was cancelled or has not ended yet is left out
-- whole, its input too. The input message is checked by role, not parity: projects upgraded
-- from the legacy layout can have pairs at (2k, 2k+1). Tool chains (a user turn, then the tool
-- turns answering each answer's calls) are kept whole or left out by Store.recent_history,
-- which pages back with $2 when the window starts inside the chain the new message continues.
-- The index on (project_id, sequence) is walked backwards from $2, two lookups per turn taken.
-- An answer's reasoning is not part of the context (it is never sent upstream), so it is not
-- read: NULL. $1 project, $2 the sequence to read below, $3 turns, $4 owner
WITH turns AS (
    SELECT a.sequence
    FROM messages AS a
    WHERE a.created_by = $4 AND a.project_id = $1 AND a.sequence < $2 AND a.role = 'assistant'
      AND a.status = 'success' AND a.is_current
      AND EXISTS (
          SELECT 1 FROM messages AS u
          WHERE u.created_by = $4 AND u.project_id = $1 AND u.sequence = a.sequence - 1
            AND u.role IN ('user', 'tool')
      )
    ORDER BY a.sequence DESC
    LIMIT $3
)
SELECT m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
       m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
       m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason,
       NULL::text AS reasoning, m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results
FROM turns AS t
JOIN messages AS m
    ON m.created_by = $4 AND m.project_id = $1 AND m.sequence IN (t.sequence - 1, t.sequence)
   AND m.is_current
ORDER BY m.sequence;

-- name: prune_events
-- Retention: drop the stored events of finished messages, a batch of chunks at a time (their
-- terminal markers too: an ended message's row is its end). The message rows keep the final content; a pruned log is answered with its terminal
-- event alone. Spans owners by design (a periodic sweep). $1 retention seconds, $2 batch size
WITH old AS (
    SELECT c.owner_id, c.message_id, c.first_event_id
    FROM event_chunks AS c
    JOIN messages AS m ON m.created_by = c.owner_id AND m.id = c.message_id
    WHERE c.created_at < now() - $1::float8 * interval '1 second'
      AND m.status IN ('success', 'error', 'cancelled')
    LIMIT $2
), gone AS (
    DELETE FROM event_chunks AS d
    USING old
    WHERE d.owner_id = old.owner_id AND d.message_id = old.message_id
      AND d.first_event_id = old.first_event_id
    RETURNING CASE WHEN d.kinds = 't' THEN 0 ELSE length(d.kinds) END AS events
)
SELECT count(*) AS chunks, coalesce(sum(events), 0)::bigint AS events FROM gone;

-- name: lock_project_for_delete
-- DELETE /api/projects/{id}, first in its transaction: the project's row, locked (the ownership
-- check is the WHERE: no row, not found). It is the lock reserve_pair's UPDATE takes, so no
-- answer is reserved in the project until the delete commits. $1 project, $2 owner
SELECT id, last_sequence FROM projects WHERE owner_id = $2 AND id = $1 FOR UPDATE;

-- name: project_running
-- How many answers of project $1 still run (queued ones included), once the delete has
-- cancelled them: a statement of its own, whose snapshot sees the cancel that committed. $2 owner
SELECT count(*) FROM messages
WHERE created_by = $2 AND project_id = $1 AND status IN ('pending', 'streaming');

-- name: delete_project_events
-- Every stored event (and terminal marker) of a project's messages. $1 project, $2 owner
DELETE FROM event_chunks AS c
USING messages AS m
WHERE c.owner_id = $2 AND m.created_by = $2 AND m.project_id = $1 AND c.message_id = m.id;

-- name: delete_project_messages
-- $1 project, $2 owner
DELETE FROM messages WHERE created_by = $2 AND project_id = $1;

-- name: delete_project
-- $1 project, $2 owner
DELETE FROM projects WHERE owner_id = $2 AND id = $1
RETURNING id;
