\set n random(:lo, :hi)
WITH p AS (
    UPDATE projects SET last_sequence = last_sequence + 2
    WHERE id = (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid) AND owner_id = (lpad(to_hex(:n::int), 32, '0')::uuid)
    RETURNING last_sequence
), u AS (
    UPDATE users
    SET running_generations = running_generations + 1
    WHERE id = (lpad(to_hex(:n::int), 32, '0')::uuid) AND EXISTS (SELECT 1 FROM p)
      AND CASE WHEN running_generations < (1000000) THEN true
               ELSE orderly_refuse('too_many_running_generations') END
)
INSERT INTO messages AS m (project_id, sequence, role, content, status, image_urls,
                           client_request_id, created_by, last_event_id, lease_owner,
                           lease_expires_at)
SELECT (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)::uuid, p.last_sequence - 1, 'user', ('Benchmark question: how are you today?')::text, 'success', ('{}')::text[], (NULL)::text,
       (lpad(to_hex(:n::int), 32, '0')::uuid)::uuid, 0, NULL::uuid, NULL::timestamptz
FROM p
UNION ALL
SELECT (('1' || lpad(to_hex(:n::int), 31, '0'))::uuid)::uuid, p.last_sequence, 'assistant', '', 'pending', '{}'::text[], (NULL)::text, (lpad(to_hex(:n::int), 32, '0')::uuid)::uuid,
       1, ('0000000b-0000-0000-0000-00000000000b')::uuid, now() + (30)::float8 * interval '1 second'
FROM p
RETURNING m.id, m.project_id, m.sequence, m.role, m.kind, m.content, m.status, m.image_urls,
          m.client_request_id, m.created_by, m.created_at, m.updated_at, m.error_code,
          m.error_message, m.last_event_id; \aset
WITH batch AS (
    SELECT *
    FROM unnest((ARRAY[('1' || lpad(to_hex(:n::int), 31, '0'))::uuid]::uuid[])::uuid[], (ARRAY[:id::uuid]::uuid[])::uuid[], (ARRAY['success']::text[])::text[], (ARRAY['You wrote 6 words and 38 characters: “Benchmark question: how are you today?”. This answer comes from the demo generator, which streams it in pieces so that you can watch the order, the progress and the resume at work.']::text[])::text[], (ARRAY[12]::integer[])::integer[], (ARRAY[NULL]::text[])::text[],
                (ARRAY[NULL]::text[])::text[])
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
      AND m.lease_owner = ('0000000b-0000-0000-0000-00000000000b') AND m.status IN ('pending', 'streaming')
    RETURNING m.project_id, m.id, m.updated_at, m.status, m.created_by
), finished_by AS (
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
    FROM unnest((array_fill(('1' || lpad(to_hex(:n::int), 31, '0'))::uuid, ARRAY[10]))::uuid[], (array_fill(:id::uuid, ARRAY[10]))::uuid[], (ARRAY[2, 3, 4, 5, 6, 7, 8, 9, 10, 11]::integer[])::integer[], (ARRAY['progress', 'progress', 'delta', 'delta', 'delta', 'delta', 'delta', 'delta', 'delta', 'delta']::text[])::text[], (ARRAY['{"stage":"thinking","message":"Reading the conversation","percent":0.0}', '{"stage":"writing","message":"Writing the answer","percent":10.0}', '{"text":"You wrote 6 words and 38 cha"}', '{"text":"racters: “Benchmark question"}', '{"text":": how are you today?”. This"}', '{"text":" answer comes from the demo"}', '{"text":" generator, which streams i"}', '{"text":"t in pieces so that you can"}', '{"text":" watch the order, the progr"}', '{"text":"ess and the resume at work."}']::text[])::text[])
        AS e (project_id, message_id, event_id, name, data)
    JOIN written AS w ON w.project_id = e.project_id AND w.id = e.message_id
)
SELECT w.id, w.updated_at FROM written AS w;
