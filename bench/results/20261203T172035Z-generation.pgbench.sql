\set n random(:lo, :hi)
WITH p AS (
    UPDATE projects SET last_sequence = last_sequence + 2
    WHERE owner_id = (lpad(to_hex(:n::int), 32, '0')::uuid) AND id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)
    RETURNING last_sequence
), seen AS (
    SELECT s.last_sequence, ('concurrent')::text IN ('reject', 'enqueue') AND NOT k.repeat AS waits, k.repeat
    FROM projects AS s
    CROSS JOIN LATERAL (
        SELECT EXISTS (
            SELECT 1 FROM messages AS k
            WHERE k.created_by = (lpad(to_hex(:n::int), 32, '0')::uuid) AND k.project_id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid) AND k.client_request_id = (NULL)::text
        ) AS repeat
    ) AS k
    WHERE s.owner_id = (lpad(to_hex(:n::int), 32, '0')::uuid) AND s.id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)
), answered AS (
    SELECT l.tool_calls, i.tools, i.tool_choice
    FROM p
    JOIN messages AS l
        ON l.created_by = (lpad(to_hex(:n::int), 32, '0')::uuid) AND l.project_id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid) AND l.sequence = p.last_sequence - 2
       AND l.is_current
    LEFT JOIN messages AS i
        ON i.created_by = (lpad(to_hex(:n::int), 32, '0')::uuid) AND i.project_id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid) AND i.sequence = p.last_sequence - 3
    WHERE (NULL)::jsonb IS NOT NULL AND l.role = 'assistant' AND l.status = 'success'
      AND l.finish_reason = 'tool_calls' AND l.tool_calls IS NOT NULL
), running AS (
    SELECT count(*) AS n, max(r.sequence) AS newest_sequence,
           (array_agg(r.id ORDER BY r.sequence DESC))[1] AS newest_id
    FROM messages AS r
    WHERE r.created_by = (lpad(to_hex(:n::int), 32, '0')::uuid) AND r.project_id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid) AND r.status IN ('pending', 'streaming')
      AND (SELECT waits FROM seen)
), a AS (
    SELECT p.last_sequence, orderly_uuid7() AS user_id, orderly_uuid7() AS assistant_id,
           CASE WHEN s.waits THEN r.n + greatest(0, (p.last_sequence - 2 - s.last_sequence) / 2)
                ELSE 0 END AS ahead,
           CASE WHEN p.last_sequence - 2 > s.last_sequence THEN '- ' || (p.last_sequence - 2)
                ELSE r.newest_id || ' ' || r.newest_sequence END AS newest,
           CASE WHEN (NULL)::jsonb IS NULL OR s.repeat THEN NULL
                WHEN NOT EXISTS (SELECT 1 FROM answered) THEN 'tool_calls_not_pending'
                WHEN (SELECT array_agg(c ->> 'id' ORDER BY c ->> 'id')
                      FROM answered, jsonb_array_elements(answered.tool_calls) AS c)
                     IS DISTINCT FROM
                     (SELECT array_agg(r ->> 'tool_call_id' ORDER BY r ->> 'tool_call_id')
                      FROM jsonb_array_elements((NULL)::jsonb) AS r)
                THEN 'tool_results_mismatch' END AS tool_refusal,
           CASE WHEN (NULL)::jsonb IS NULL OR (NULL)::jsonb IS NOT NULL OR (NULL)::jsonb IS NOT NULL
                THEN (NULL)::jsonb ELSE (SELECT tools FROM answered) END AS tools,
           CASE WHEN (NULL)::jsonb IS NULL OR (NULL)::jsonb IS NOT NULL OR (NULL)::jsonb IS NOT NULL
                THEN (NULL)::jsonb ELSE (SELECT tool_choice FROM answered) END AS tool_choice
    FROM p, seen AS s, running AS r
), u AS (
    INSERT INTO user_running AS c (user_id, running_generations)
    SELECT (lpad(to_hex(:n::int), 32, '0')::uuid), 1 FROM a
    WHERE (1000000) >= 1
      AND CASE WHEN EXISTS (SELECT 1 FROM workers AS w WHERE w.id = ('0000000b-0000-0000-0000-00000000000b') AND w.expires_at > now())
               THEN true ELSE orderly_refuse('heartbeat_expired') END
    ON CONFLICT (user_id) DO UPDATE SET running_generations = c.running_generations + 1
    WHERE c.running_generations < (1000000)
    RETURNING 1
), queued AS (
    INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data)
    SELECT (lpad(to_hex(:n::int), 32, '0')::uuid)::uuid, a.assistant_id, 2, 'p',
           '{"stage":"queued","message":"Queued behind ' || a.ahead || ' earlier answer'
           || CASE WHEN a.ahead = 1 THEN '' ELSE 's' END || '","percent":' || 'null}'
    FROM a
    WHERE a.ahead > 0
)
INSERT INTO messages AS m (project_id, id, sequence, role, content, status, image_urls,
                           client_request_id, created_by, last_event_id, lease_owner, queued_at,
                           tools, tool_choice, tool_results)
SELECT (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)::uuid, a.user_id, a.last_sequence - 1,
       CASE WHEN (NULL)::jsonb IS NULL THEN 'user' ELSE 'tool' END, ('Benchmark question: how are you today?')::text, 'success',
       ('{}')::text[], (NULL)::text, (lpad(to_hex(:n::int), 32, '0')::uuid)::uuid, 0, NULL::uuid, NULL::timestamptz,
       a.tools, a.tool_choice, (NULL)::jsonb
FROM a
UNION ALL
SELECT (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)::uuid, a.assistant_id, a.last_sequence, 'assistant', '', 'pending', '{}'::text[],
       (NULL)::text, (lpad(to_hex(:n::int), 32, '0')::uuid)::uuid, CASE WHEN a.ahead > 0 THEN 2 ELSE 1 END,
       CASE WHEN a.ahead > 0 THEN NULL ELSE ('0000000b-0000-0000-0000-00000000000b')::uuid END,
       CASE WHEN a.ahead > 0 THEN now() END, NULL::jsonb, NULL::jsonb, NULL::jsonb
FROM a
WHERE CASE WHEN a.tool_refusal IS NOT NULL THEN orderly_refuse(a.tool_refusal)
           WHEN NOT EXISTS (SELECT 1 FROM u) THEN orderly_refuse('too_many_running_generations')
           WHEN ('concurrent')::text = 'reject' AND a.ahead > 0
           THEN orderly_refuse('answer_running', a.newest) ELSE true END
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason,
          m.reasoning, m.reasoning_tokens, m.reasoning_ms,
          m.tool_calls, m.tool_results, m.tools, m.tool_choice; \aset
WITH new_chunks AS (
    SELECT *
    FROM unnest((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[], (ARRAY[:id::uuid]::uuid[])::uuid[], (ARRAY[2]::integer[])::integer[], (ARRAY['ppdddddddd']::text[])::text[], (ARRAY['{"stage":"thinking","message":"Reading the conversation","percent":0.0}
{"stage":"writing","message":"Writing the answer","percent":10.0}
{"text":"You wrote 6 words and 38 characters: "}
{"text":"“Benchmark question: how are you toda"}
{"text":"y?”\n\nThis answer comes from the demo "}
{"text":"generator (`GENERATOR=demo`), which s"}
{"text":"treams it in pieces so that you can "}
{"text":"watch:\n\n- the order of the messages,"}
{"text":"\n- the progress of the answer,\n- the"}
{"text":" resume after a reload or an outage."}']::text[])::text[])
        AS c (owner_id, message_id, first_event_id, kinds, data)
), changes AS (
    SELECT *
    FROM unnest((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[], (ARRAY[:id::uuid]::uuid[])::uuid[], (ARRAY['success']::text[])::text[], (ARRAY['You wrote 6 words and 38 characters: “Benchmark question: how are you today?”

This answer comes from the demo generator (`GENERATOR=demo`), which streams it in pieces so that you can watch:

- the order of the messages,
- the progress of the answer,
- the resume after a reload or an outage.']::text[])::text[], (ARRAY[12]::integer[])::integer[], (ARRAY[NULL]::text[])::text[],
                (ARRAY[NULL]::text[])::text[], (ARRAY[6]::integer[])::integer[], (ARRAY[8]::integer[])::integer[], (ARRAY['stop']::text[])::text[], (ARRAY[NULL]::text[])::text[],
                (ARRAY[NULL]::integer[])::integer[], (ARRAY[NULL]::integer[])::integer[], (ARRAY[NULL]::text[])::text[])
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
    WHERE m.created_by = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[])
      AND m.lease_owner = ('0000000b-0000-0000-0000-00000000000b') AND m.status IN ('pending', 'streaming')
      AND EXISTS (SELECT 1 FROM workers AS w WHERE w.id = ('0000000b-0000-0000-0000-00000000000b') AND w.expires_at > now())
), changed AS (
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
    WHERE m.created_by = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[])
      AND m.created_by = b.owner_id AND m.id = b.id AND b.status <> h.was
      AND m.lease_owner = ('0000000b-0000-0000-0000-00000000000b') AND m.status IN ('pending', 'streaming')
    RETURNING m.created_by, m.project_id, m.id, m.updated_at, m.status
), chunks AS (
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
        WHERE e.owner_id = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[])
          AND e.owner_id = c.owner_id AND e.message_id = c.message_id
          AND e.first_event_id = c.first_event_id
    )
      AND (SELECT count(*) FROM changed) >= 0
    RETURNING 1
), already AS (
    SELECT m.id, m.updated_at
    FROM messages AS m JOIN changes AS b ON m.created_by = b.owner_id AND m.id = b.id
    WHERE m.created_by = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[])
      AND b.status IN ('success', 'error', 'cancelled')
      AND m.status = b.status AND m.last_event_id = b.last_event_id
      AND m.error_code IS NOT DISTINCT FROM b.error_code
), finished_by AS (
    SELECT l.user_id, l.version
    FROM (
        SELECT r.user_id, r.xmin::text AS version FROM user_running AS r
        WHERE r.user_id = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[])
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
    WHERE u.user_id = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[])
      AND u.user_id = f.created_by AND u.user_id IN (SELECT user_id FROM finished_by)
    RETURNING u.user_id
), queue_hint AS (
    SELECT CASE WHEN count(*) > 100 THEN '*'
                ELSE string_agg(DISTINCT c.created_by || '/' || c.project_id, ',') END AS projects
    FROM changed AS c
    WHERE c.status IN ('success', 'error', 'cancelled') AND (SELECT count(*) FROM released) >= 0
      AND (
          EXISTS (
              SELECT 1 FROM messages AS q
              WHERE q.created_by = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[])
                AND q.created_by = c.created_by AND q.project_id = c.project_id
                AND q.status = 'pending' AND q.lease_owner IS NULL
          )
          OR EXISTS (
              SELECT 1 FROM finished_by AS f JOIN user_running AS s ON s.user_id = f.user_id
              WHERE s.user_id = ANY((ARRAY[lpad(to_hex(:n::int), 32, '0')::uuid]::uuid[])::uuid[]) AND f.user_id = c.created_by
                AND s.xmin::text <> f.version
          )
      )
    HAVING count(*) > 0
), notified AS (
    SELECT pg_notify('orderly_events',
                     CASE WHEN count(*) > 150 THEN '*' ELSE string_agg(id::text, ',') END)::text,
           (SELECT pg_notify('orderly_queue', projects)::text FROM queue_hint)
    FROM held
    WHERE (false)::boolean
    HAVING count(*) > 0
)
SELECT h.id, c.updated_at, q.projects AS queue_hint FROM held AS h
LEFT JOIN changed AS c ON c.created_by = h.owner_id AND c.id = h.id
LEFT JOIN queue_hint AS q ON true
LEFT JOIN notified ON true
UNION ALL
SELECT a.id, a.updated_at, NULL FROM already AS a;;
