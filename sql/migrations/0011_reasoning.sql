-- A model's reasoning (docs/api.md, the `reasoning` event): streamed as events of kind 'r' in
-- event_chunks, like deltas, and kept on the message once it ends, as `reasoning` (NULL when the
-- model gave none), apart from the content. `reasoning_tokens` is the model server's
-- `usage.completion_tokens_details.reasoning_tokens`, kept like the other counts (migration
-- 0006): only on a successful answer, NULL when not reported. `reasoning_ms`: how long the model
-- reasoned (from its first reasoning event to its first text, or to its end), as the worker that
-- ran the answer timed it; written with the end by that worker (NULL for an answer ended by
-- cancel or the reaper, which cannot know it).
--
-- Idempotent, on one PostgreSQL and on Citus (tables already distributed or not): IF NOT EXISTS
-- for the columns; each constraint dropped if there and added back, one per statement (Citus
-- takes ADD CONSTRAINT only as the single subcommand of its ALTER TABLE); CREATE OR REPLACE for
-- the view and the function. Checked on a local Citus 13.2 cluster: migrated to 0010,
-- distributed, then this migration, then `migrate` again (nothing to do). Nullable columns
-- without a default rewrite nothing.

DO $$
DECLARE
    step text;
BEGIN
    -- One EXECUTE per change: on Citus, DDL on a distributed table is sent to its shards with
    -- the text of the command, which must then be that command alone (a migration file that
    -- holds several fails on a cluster already distributed: "cannot insert multiple commands
    -- into a prepared statement"). And one connection per node for the whole migration: the
    -- function replaced below may not follow DDL run over several connections per node.
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    END IF;
    FOREACH step IN ARRAY ARRAY[
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS reasoning text',
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS reasoning_tokens integer',
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS reasoning_ms integer',
        'ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_reasoning_tokens_check',
        'ALTER TABLE messages ADD CONSTRAINT messages_reasoning_tokens_check'
        ' CHECK (reasoning_tokens IS NULL'
        ' OR (reasoning_tokens >= 0 AND status = ''success'' AND prompt_tokens IS NOT NULL))'
        ' NOT VALID',
        'ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_reasoning_ms_check',
        'ALTER TABLE messages ADD CONSTRAINT messages_reasoning_ms_check'
        ' CHECK (reasoning_ms IS NULL OR (reasoning_ms >= 0 AND reasoning IS NOT NULL))'
        ' NOT VALID',
        -- The stored events' kinds: ''r'' joins ''d'' (delta) and ''p'' (progress). NOT VALID:
        -- every row already holds the old letters, which the new pattern allows; validating
        -- would only scan the table under this migration's lock.
        'ALTER TABLE event_chunks DROP CONSTRAINT IF EXISTS event_chunks_kinds_check',
        'ALTER TABLE event_chunks ADD CONSTRAINT event_chunks_kinds_check'
        ' CHECK (kinds ~ ''^([dpr]+|t)$'') NOT VALID'
    ]
    LOOP
        EXECUTE step;
    END LOOP;
END
$$;

-- How reads assemble a running answer (sql/queries.sql spells it out per statement): its
-- reasoning is the joined texts of its stored 'r' events, as its content is of its 'd' events.
CREATE OR REPLACE VIEW message_view AS
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming')
            THEN (SELECT coalesce(string_agg(e.data::json ->> 'text', ''
                                             ORDER BY c.first_event_id, e.n), '')
                  FROM event_chunks AS c
                  CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL),
                                            string_to_array(c.data, E'\n'))
                      WITH ORDINALITY AS e (kind, data, n)
                  WHERE c.owner_id = m.created_by AND c.message_id = m.id AND e.kind = 'd')
            ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN (SELECT coalesce(max(c.first_event_id + length(c.kinds) - 1), 1)
                  FROM event_chunks AS c
                  WHERE c.owner_id = m.created_by AND c.message_id = m.id AND c.kinds <> 't')
            ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason,
       CASE WHEN m.status IN ('pending', 'streaming')
            THEN (SELECT string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
                  FROM event_chunks AS c
                  CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL),
                                            string_to_array(c.data, E'\n'))
                      WITH ORDINALITY AS e (kind, data, n)
                  WHERE c.owner_id = m.created_by AND c.message_id = m.id AND e.kind = 'r')
            ELSE m.reasoning END AS reasoning,
       m.reasoning_tokens, m.reasoning_ms
FROM messages AS m;

-- The end of a running answer (0010, unchanged but for step 3): it keeps the reasoning of its
-- stored 'r' events too, as it keeps the content of its deltas.
CREATE OR REPLACE FUNCTION orderly_close(o uuid, p uuid, m uuid, end_status text, code text,
                                         detail text, caller uuid)
RETURNS SETOF messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    terminal integer;
    claim integer;
    ended messages;
BEGIN
    IF caller IS NOT NULL AND caller <> o THEN
        RETURN;
    END IF;
    -- 1. The message's row: waits for a flush that is writing its status, then finds it ended.
    PERFORM 1
    FROM messages AS x
    WHERE x.created_by = o AND x.id = m AND x.project_id = p AND x.role = 'assistant'
      AND x.status IN ('pending', 'streaming')
    FOR NO KEY UPDATE OF x;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- 2. The terminal event's id: the one after the last stored event, claimed by a terminal
    -- marker (see 0009).
    -- (The id is read, then inserted: on Citus an INSERT ... SELECT ... ON CONFLICT DO NOTHING
    -- that meets a conflict fails in PL/pgSQL, "consistency check on SPI tuple count failed".)
    FOR attempt IN 1..100 LOOP
        SELECT coalesce(max(c.first_event_id + length(c.kinds) - 1), 1) + 1 INTO claim
        FROM event_chunks AS c
        WHERE c.owner_id = o AND c.message_id = m AND c.kinds <> 't';
        INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data)
        VALUES (o, m, claim, 't', '')
        ON CONFLICT (owner_id, message_id, first_event_id) DO NOTHING
        RETURNING first_event_id INTO terminal;
        EXIT WHEN terminal IS NOT NULL;
    END LOOP;
    IF terminal IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '40001',
            MESSAGE = 'the end of an answer lost every claim to its writer';
    END IF;
    -- 3. The row, ended, with the content of its stored deltas and the reasoning of its stored
    -- reasoning events (NULL: none).
    UPDATE messages AS x
    SET status = end_status,
        error_code = code,
        error_message = detail,
        content = (
            SELECT coalesce(string_agg(e.data::json ->> 'text', ''
                                       ORDER BY c.first_event_id, e.n), '')
            FROM event_chunks AS c
            CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL),
                                      string_to_array(c.data, E'\n'))
                WITH ORDINALITY AS e (kind, data, n)
            WHERE c.owner_id = o AND c.message_id = m AND e.kind = 'd'
        ),
        reasoning = (
            SELECT string_agg(e.data::json ->> 'text', '' ORDER BY c.first_event_id, e.n)
            FROM event_chunks AS c
            CROSS JOIN LATERAL unnest(string_to_array(c.kinds, NULL),
                                      string_to_array(c.data, E'\n'))
                WITH ORDINALITY AS e (kind, data, n)
            WHERE c.owner_id = o AND c.message_id = m AND e.kind = 'r'
        ),
        last_event_id = terminal,
        lease_owner = NULL,
        updated_at = now()
    WHERE x.created_by = o AND x.id = m
    RETURNING x.* INTO ended;
    -- 4. The user's running count, last.
    UPDATE user_running SET running_generations = greatest(0, running_generations - 1)
    WHERE user_id = o;
    -- An answer that ended may have been the last before a queued answer's turn: looked at once
    -- the user's row is locked (this statement's snapshot is taken now).
    PERFORM pg_notify('orderly_queue', o::text || '/' || p::text)
    WHERE EXISTS (
        SELECT 1 FROM messages AS q
        WHERE q.created_by = o AND q.project_id = p AND q.status = 'pending'
          AND q.lease_owner IS NULL
    );
    -- Every worker: the writer stops its generator, listeners read the end.
    PERFORM pg_notify('orderly_cancel', m::text), pg_notify('orderly_events', m::text);
    RETURN NEXT ended;
END
$$;
