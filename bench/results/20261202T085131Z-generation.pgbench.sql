\set n random(:lo, :hi)
WITH p AS (
    UPDATE projects SET last_sequence = last_sequence + 2
    WHERE id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid) AND owner_id = (lpad(to_hex(:n::int), 32, '0')::uuid)
    RETURNING last_sequence, orderly_uuid7() AS user_id, orderly_uuid7() AS assistant_id,
              cardinality(orderly_running_answers(id, last_sequence - 1, ('concurrent')::text, (NULL)::text)) AS ahead
), u AS (
    UPDATE users
    SET running_generations = running_generations + 1
    WHERE id = (lpad(to_hex(:n::int), 32, '0')::uuid) AND EXISTS (SELECT 1 FROM p)
      AND CASE WHEN running_generations < (1000000) THEN true
               ELSE orderly_refuse('too_many_running_generations') END
      AND CASE WHEN EXISTS (SELECT 1 FROM workers AS w WHERE w.id = ('0000000b-0000-0000-0000-00000000000b') AND w.expires_at > now())
               THEN true ELSE orderly_refuse('heartbeat_expired') END
), queued AS (
    INSERT INTO event_chunks (project_id, message_id, first_event_id, kinds, data)
    SELECT (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)::uuid, p.assistant_id, 2, 'p',
           '{"stage":"queued","message":"Queued behind ' || p.ahead || ' earlier answer'
           || CASE WHEN p.ahead = 1 THEN '' ELSE 's' END || '","percent":' || 'null}'
    FROM p
    WHERE p.ahead > 0
)
INSERT INTO messages AS m (project_id, id, sequence, role, content, status, image_urls,
                           client_request_id, created_by, last_event_id, lease_owner, queued_at)
SELECT (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)::uuid, p.user_id, p.last_sequence - 1, 'user', ('Benchmark question: how are you today?')::text, 'success',
       ('{}')::text[], (NULL)::text, (lpad(to_hex(:n::int), 32, '0')::uuid)::uuid, 0, NULL::uuid, NULL::timestamptz
FROM p
UNION ALL
SELECT (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)::uuid, p.assistant_id, p.last_sequence, 'assistant', '', 'pending', '{}'::text[],
       (NULL)::text, (lpad(to_hex(:n::int), 32, '0')::uuid)::uuid, CASE WHEN p.ahead > 0 THEN 2 ELSE 1 END,
       CASE WHEN p.ahead > 0 THEN NULL ELSE ('0000000b-0000-0000-0000-00000000000b')::uuid END,
       CASE WHEN p.ahead > 0 THEN now() END
FROM p
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id, m.prompt_tokens, m.completion_tokens, m.finish_reason; \aset
WITH new_chunks AS (
    SELECT *
    FROM unnest((ARRAY[('1' || lpad(to_hex(:n::int), 31, '0'))::uuid]::uuid[])::uuid[], (ARRAY[:id::uuid]::uuid[])::uuid[], (ARRAY[2]::integer[])::integer[], (ARRAY['ppdddddddd']::text[])::text[], (ARRAY['{"stage":"thinking","message":"Reading the conversation","percent":0.0}
{"stage":"writing","message":"Writing the answer","percent":10.0}
{"text":"You wrote 6 words and 38 characters: "}
{"text":"“Benchmark question: how are you toda"}
{"text":"y?”\n\nThis answer comes from the demo "}
{"text":"generator (`GENERATOR=demo`), which s"}
{"text":"treams it in pieces so that you can "}
{"text":"watch:\n\n- the order of the messages,"}
{"text":"\n- the progress of the answer,\n- the"}
{"text":" resume after a reload or an outage."}']::text[])::text[])
        AS c (project_id, message_id, first_event_id, kinds, data)
), changes AS (
    SELECT *
    FROM unnest((ARRAY[('1' || lpad(to_hex(:n::int), 31, '0'))::uuid]::uuid[])::uuid[], (ARRAY[:id::uuid]::uuid[])::uuid[], (ARRAY['success']::text[])::text[], (ARRAY['You wrote 6 words and 38 characters: “Benchmark question: how are you today?”

This answer comes from the demo generator (`GENERATOR=demo`), which streams it in pieces so that you can watch:

- the order of the messages,
- the progress of the answer,
- the resume after a reload or an outage.']::text[])::text[], (ARRAY[12]::integer[])::integer[], (ARRAY[NULL]::text[])::text[],
                (ARRAY[NULL]::text[])::text[], (ARRAY[6]::integer[])::integer[], (ARRAY[8]::integer[])::integer[], (ARRAY['stop']::text[])::text[])
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
    WHERE m.lease_owner = ('0000000b-0000-0000-0000-00000000000b') AND m.status IN ('pending', 'streaming')
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
        updated_at = now(),
        lease_owner = CASE WHEN b.status IN ('pending', 'streaming') THEN m.lease_owner END
    FROM changes AS b JOIN held AS h ON h.project_id = b.project_id AND h.id = b.id
    WHERE m.project_id = b.project_id AND m.id = b.id AND b.status <> h.was
      AND m.lease_owner = ('0000000b-0000-0000-0000-00000000000b') AND m.status IN ('pending', 'streaming')
    RETURNING m.project_id, m.id, m.updated_at, m.status, m.created_by
), chunks AS (
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
    SELECT m.id, m.updated_at
    FROM messages AS m JOIN changes AS b ON m.project_id = b.project_id AND m.id = b.id
    WHERE b.status IN ('success', 'error', 'cancelled')
      AND m.status = b.status AND m.last_event_id = b.last_event_id
      AND m.error_code IS NOT DISTINCT FROM b.error_code
), finished_by AS (
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
    SELECT orderly_queue_hint(array_agg(DISTINCT project_id))
    FROM changed
    WHERE status IN ('success', 'error', 'cancelled') AND (SELECT count(*) FROM released) >= 0
    HAVING count(*) > 0
)
SELECT h.id, c.updated_at FROM held AS h
LEFT JOIN changed AS c ON c.project_id = h.project_id AND c.id = h.id
LEFT JOIN queue_hint ON true
UNION ALL
SELECT a.id, a.updated_at FROM already AS a;;
