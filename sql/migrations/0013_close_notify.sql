-- The queue's NOTIFY from the end of an answer, on Citus (orderly_close, 0011, unchanged but for
-- its last step).
--
-- orderly_close told the queue with `PERFORM pg_notify('orderly_queue', ...) WHERE EXISTS
-- (SELECT ... FROM messages ...)`: one query that reads a distributed table by its owner. Citus
-- routes such a query whole to the node that holds the shard, pg_notify included, so on Citus the
-- notification was sent on that worker node, where no Orderly process listens: a queued answer
-- whose turn came when the answer ahead was cancelled, interrupted or reaped waited for the slow
-- poll (QUEUE_POLL_SECONDS). Now whether a queued answer waits is read into a variable first,
-- and the NOTIFY is a statement of its own, which runs where the function runs (the
-- coordinator). On one PostgreSQL nothing changes.

CREATE OR REPLACE FUNCTION orderly_close(o uuid, p uuid, m uuid, end_status text, code text,
                                         detail text, caller uuid)
RETURNS SETOF messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    terminal integer;
    claim integer;
    ended messages;
    waiting boolean;
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
    -- (Read first, sent alone: a NOTIFY inside a query on a distributed table would be sent on
    -- the shard's node.)
    SELECT EXISTS (
        SELECT 1 FROM messages AS q
        WHERE q.created_by = o AND q.project_id = p AND q.status = 'pending'
          AND q.lease_owner IS NULL
    ) INTO waiting;
    IF waiting THEN
        PERFORM pg_notify('orderly_queue', o::text || '/' || p::text);
    END IF;
    -- Every worker: the writer stops its generator, listeners read the end.
    PERFORM pg_notify('orderly_cancel', m::text), pg_notify('orderly_events', m::text);
    RETURN NEXT ended;
END
$$;
