-- The end of a running answer (cancel, interrupt, the reaper, a message that cannot be written)
-- takes its locks in the order of every statement that ends answers (docs/architecture.md, "Lock
-- order"): the message's row, then the key of its terminal event, then its user's row. It was one
-- statement of data-modifying CTEs, whose order PostgreSQL does not promise, and it claimed the key
-- before the row: against a flush that held the row (or the user's row) and then wanted the key,
-- that was a deadlock. Here the steps are separate statements, run in this order, one message per
-- call (one transaction holds one message's locks), on the database side: one round trip, and no
-- lock is held across a round trip to the client.
--
-- Each statement takes a snapshot of its own (plpgsql, VOLATILE, READ COMMITTED), which is what
-- lets the claim win: a claim loses only to a chunk the writer stored at that very id (nothing else
-- can end the message while its row is locked here), the insert waits for that chunk to commit,
-- and the next claim sees it. A writer stores one chunk per message per flush, a flush interval
-- apart at the least; the next claim follows at once.
--
-- Returns the ended message; nothing when it is not running, not an assistant message, or not the
-- caller's. p project, m message, end_status, code and detail: the end; caller: the user who asks,
-- or NULL for internal ends.
CREATE FUNCTION orderly_close(p uuid, m uuid, end_status text, code text, detail text,
                              caller uuid)
RETURNS SETOF messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    terminal integer;
    ended messages;
BEGIN
    -- 1. The message's row: waits for a flush that is writing its status, then finds it ended.
    PERFORM 1
    FROM messages AS x
    WHERE x.project_id = p AND x.id = m AND x.role = 'assistant'
      AND x.status IN ('pending', 'streaming')
      AND (caller IS NULL OR EXISTS (
          SELECT 1 FROM projects AS o WHERE o.id = x.project_id AND o.owner_id = caller
      ))
    FOR NO KEY UPDATE OF x;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- 2. The terminal event's id: the one after the last stored event, claimed by a terminal
    -- marker. The writer's next chunk starts at that id, so it fails on the key: no event after
    -- the end, and the end misses no event stored before it.
    FOR attempt IN 1..100 LOOP
        INSERT INTO event_chunks (project_id, message_id, first_event_id, kinds, data)
        VALUES (p, m, orderly_last_stored_event(p, m) + 1, 't', '')
        ON CONFLICT (project_id, message_id, first_event_id) DO NOTHING
        RETURNING first_event_id INTO terminal;
        EXIT WHEN terminal IS NOT NULL;
    END LOOP;
    IF terminal IS NULL THEN
        -- The writer won a hundred claims in a row: the database answers slower than a flush
        -- interval, many times over. Busy: server/db.py answers 503 (nothing was changed).
        RAISE EXCEPTION USING ERRCODE = '40001',
            MESSAGE = 'the end of an answer lost every claim to its writer';
    END IF;
    -- 3. The row, ended, with the content of its stored deltas: this statement's snapshot sees
    -- every chunk before the claimed id, so it is what the listeners saw.
    UPDATE messages AS x
    SET status = end_status,
        error_code = code,
        error_message = detail,
        content = orderly_stored_content(x.project_id, x.id),
        last_event_id = terminal,
        lease_owner = NULL,
        updated_at = now()
    WHERE x.project_id = p AND x.id = m
    RETURNING x.* INTO ended;
    -- 4. The user's row, last.
    UPDATE users SET running_generations = greatest(0, running_generations - 1)
    WHERE id = ended.created_by;
    -- An answer that ended may have been the last before a queued answer's turn: looked at once
    -- the user's row is locked (see the flush in sql/queries.sql).
    PERFORM orderly_queue_hint(ARRAY[p]);
    -- Every worker: the writer stops its generator, listeners read the end.
    PERFORM pg_notify('orderly_cancel', m::text), pg_notify('orderly_events', m::text);
    RETURN NEXT ended;
END
$$;
