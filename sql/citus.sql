-- The hot path's statements on Citus: the bodies of their delegated functions (server/citus.py).
--
-- On one PostgreSQL, reserve_pair and flush are single statements of sql/queries.sql: their
-- CTEs run in one plan, in one snapshot. Citus plans such a statement in steps (each CTE that
-- writes becomes a query of its own, its rows shipped to every node as an intermediate result,
-- and the transaction committed on all of them in two phases), even when every table it touches
-- is on one shard. So on Citus each of them is a PL/pgSQL function of plain statements, each
-- single-shard (its owners' shard) or on a reference table, which Citus runs on the node that
-- holds the shard, in that node's local transaction: one round trip, one node, one commit.
--
-- Each body does what its statement does, step by step, in the statement's lock order, with the
-- statement's refusals in the statement's order; the differences, all of them from a snapshot
-- per step rather than one for the whole statement, are named where they arise. Each body's
-- arguments are its statement's ($1 ... $n, the same types: server/citus.py reads them from the
-- statement), then the owner that routes the call. Every statement that reads a distributed
-- table is an EXECUTE, planned with its values: a single-shard plan (Citus prunes by value),
-- never a generic one.
--
-- The whole integration suite runs against these bodies on a Citus cluster (make test-citus).

-- name: reserve_pair
-- sql/queries.sql, reserve_pair: the same arguments, rows and refusals. The refusals' order: a
-- repeated key (the user message's insert fails on messages_idempotency_key), a tool-result turn
-- that answers no pending calls or not all of them, an expired heartbeat, the cap, reject.
-- Lock order: the project's row, the new messages' keys, the user's running count.
-- Unlike the statement, each step reads a snapshot of its own, taken after the project's row
-- lock is held: the running answers it counts include every pair reserved by a reservation that
-- committed while this one waited for the lock, by id (no "- <sequence>" naming).
DECLARE
    in_project ALIAS FOR $1;
    in_owner ALIAS FOR $2;
    in_content ALIAS FOR $3;
    in_image_urls ALIAS FOR $4;
    in_request ALIAS FOR $5;
    in_worker ALIAS FOR $6;
    in_cap ALIAS FOR $7;
    in_policy ALIAS FOR $8;
    in_results ALIAS FOR $9;
    in_tools ALIAS FOR $10;
    in_tool_choice ALIAS FOR $11;
    v_returning CONSTANT text :=
        ' RETURNING id, project_id, sequence, role, kind, content, status, image_urls,'
        ' client_request_id, created_by, created_at, updated_at, error_code, error_message,'
        ' last_event_id, prompt_tokens, completion_tokens, finish_reason, reasoning,'
        ' reasoning_tokens, reasoning_ms, tool_calls, tool_results, tools, tool_choice';
    v_last bigint;
    v_repeat boolean;
    v_user uuid := orderly_uuid7();
    v_assistant uuid := orderly_uuid7();
    v_tools jsonb := in_tools;
    v_tool_choice jsonb := in_tool_choice;
    v_calls jsonb;
    v_answered_tools jsonb;
    v_answered_choice jsonb;
    v_ahead bigint := 0;
    v_newest text;
    v_rows bigint;
BEGIN
    -- The project's row: the pair's sequences, and the lock every reservation of the project
    -- takes first. No row: not the owner's project (no rows returned).
    EXECUTE 'UPDATE projects SET last_sequence = last_sequence + 2'
            ' WHERE owner_id = $1 AND id = $2 RETURNING last_sequence'
        INTO v_last USING in_owner, in_project;
    IF v_last IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM messages'
            ' WHERE created_by = $1 AND project_id = $2 AND client_request_id = $3)'
        INTO v_repeat USING in_owner, in_project, in_request;

    -- A tool-result turn answers every call of the project's latest answer (the message below
    -- this pair), which must have ended with tool calls; it takes that turn's tools unless it
    -- names its own.
    IF in_results IS NOT NULL AND NOT v_repeat THEN
        EXECUTE 'SELECT l.tool_calls, i.tools, i.tool_choice FROM messages AS l'
                ' LEFT JOIN messages AS i ON i.created_by = $1 AND i.project_id = $2'
                '     AND i.sequence = $3 - 3'
                ' WHERE l.created_by = $1 AND l.project_id = $2 AND l.sequence = $3 - 2'
                '   AND l.is_current'
                '   AND l.role = ''assistant'' AND l.status = ''success'''
                '   AND l.finish_reason = ''tool_calls'' AND l.tool_calls IS NOT NULL'
            INTO v_calls, v_answered_tools, v_answered_choice
            USING in_owner, in_project, v_last;
        IF v_calls IS NULL THEN
            PERFORM orderly_refuse('tool_calls_not_pending');
        END IF;
        IF (SELECT array_agg(c ->> 'id' ORDER BY c ->> 'id')
            FROM jsonb_array_elements(v_calls) AS c)
           IS DISTINCT FROM
           (SELECT array_agg(r ->> 'tool_call_id' ORDER BY r ->> 'tool_call_id')
            FROM jsonb_array_elements(in_results) AS r) THEN
            PERFORM orderly_refuse('tool_results_mismatch');
        END IF;
        IF in_tools IS NULL AND in_tool_choice IS NULL THEN
            v_tools := v_answered_tools;
            v_tool_choice := v_answered_choice;
        END IF;
    END IF;

    -- The input message (a repeated key fails here: server/db.py reads the constraint).
    RETURN QUERY EXECUTE
        'INSERT INTO messages (project_id, id, sequence, role, content, status, image_urls,'
        '                      client_request_id, created_by, last_event_id, tools,'
        '                      tool_choice, tool_results)'
        ' VALUES ($1, $2, $3, CASE WHEN $4::jsonb IS NULL THEN ''user'' ELSE ''tool'' END, $5,'
        '         ''success'', $6, $7, $8, 0, $9, $10, $4)' || v_returning
        USING in_project, v_user, v_last - 1, in_results, in_content, in_image_urls,
              in_request, in_owner, v_tools, v_tool_choice;

    -- The worker's heartbeat (a reference table: read on this node), then the user's cap.
    IF in_cap < 1 THEN
        PERFORM orderly_refuse('too_many_running_generations');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM workers AS w WHERE w.id = in_worker AND w.expires_at > now())
    THEN
        PERFORM orderly_refuse('heartbeat_expired');
    END IF;
    EXECUTE 'INSERT INTO user_running AS c (user_id, running_generations) VALUES ($1, 1)'
            ' ON CONFLICT (user_id) DO UPDATE SET running_generations = c.running_generations + 1'
            ' WHERE c.running_generations < $2'
        USING in_owner, in_cap;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows = 0 THEN
        PERFORM orderly_refuse('too_many_running_generations');
    END IF;

    -- The on_running policy, against the project's running answers (none counted for
    -- concurrent and interrupt).
    IF in_policy IN ('reject', 'enqueue') THEN
        EXECUTE 'SELECT count(*), (array_agg(id || '' '' || sequence ORDER BY sequence DESC))[1]'
                ' FROM messages WHERE created_by = $1 AND project_id = $2'
                '   AND status IN (''pending'', ''streaming'')'
            INTO v_ahead, v_newest USING in_owner, in_project;
        IF in_policy = 'reject' AND v_ahead > 0 THEN
            PERFORM orderly_refuse('answer_running', v_newest);
        END IF;
    END IF;

    -- A queued answer's log starts with its `queued` event, written with its row.
    IF v_ahead > 0 THEN
        EXECUTE 'INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data)'
                ' VALUES ($1, $2, 2, ''p'', $3)'
            USING in_owner, v_assistant,
                  '{"stage":"queued","message":"Queued behind ' || v_ahead || ' earlier answer'
                  || CASE WHEN v_ahead = 1 THEN '' ELSE 's' END || '","percent":null}';
    END IF;
    RETURN QUERY EXECUTE
        'INSERT INTO messages (project_id, id, sequence, role, content, status, image_urls,'
        '                      client_request_id, created_by, last_event_id, lease_owner,'
        '                      queued_at)'
        ' VALUES ($1, $2, $3, ''assistant'', '''', ''pending'', ''{}'', $4, $5,'
        '         CASE WHEN $6 THEN 2 ELSE 1 END, CASE WHEN $6 THEN NULL ELSE $7::uuid END,'
        '         CASE WHEN $6 THEN now() END)' || v_returning
        USING in_project, v_assistant, v_last, in_request, in_owner, v_ahead > 0, in_worker;
END

-- name: flush
-- sql/queries.sql, flush: the same arguments, rows, fences and lock order (the rows of the
-- messages whose status changes, then the chunks' keys, then the users' running counts in id
-- order); idempotent the same way. Every statement is filtered by the batch's owners ($17), all
-- of one shard (server/store.py groups them), so each runs on this node's shards.
-- Unlike the statement, each step reads a snapshot of its own: the queue's hint is read once
-- the users' rows are locked, so it sees every answer queued by a reservation that committed
-- before (the statement compares the rows' versions for that). $18 is false on Citus: the
-- NOTIFYs go through the coordinator (server/store.py).
DECLARE
    in_worker ALIAS FOR $1;
    in_owners ALIAS FOR $17;
    v_terminal CONSTANT text[] := '{success,error,cancelled}';
    v_already_ids uuid[];
    v_already_at timestamptz[];
    v_held uuid[];
    v_existing_ids uuid[];
    v_existing_firsts integer[];
    v_changed_ids uuid[] := '{}';
    v_changed_at timestamptz[] := '{}';
    v_ended_owners uuid[] := '{}';
    v_ended_projects uuid[] := '{}';
    v_hint text;
    r record;
BEGIN
    -- The retry of a terminal write that committed: rows that already hold its end (read
    -- before anything here changes them).
    IF $9 && v_terminal THEN
        EXECUTE 'SELECT array_agg(m.id), array_agg(m.updated_at) FROM messages AS m'
                ' JOIN unnest($1::uuid[], $2::uuid[], $3::text[], $4::integer[], $5::text[])'
                '     AS b (owner_id, id, status, last_event_id, error_code)'
                '     ON m.created_by = b.owner_id AND m.id = b.id'
                ' WHERE m.created_by = ANY($6) AND b.status = ANY($7)'
                '   AND m.status = b.status AND m.last_event_id = b.last_event_id'
                '   AND m.error_code IS NOT DISTINCT FROM b.error_code'
            INTO v_already_ids, v_already_at
            USING $7, $8, $9, $11, $12, in_owners, v_terminal;
    END IF;

    -- The messages this worker still holds: leased to it, running, its heartbeat alive.
    IF EXISTS (SELECT 1 FROM workers AS w WHERE w.id = in_worker AND w.expires_at > now()) THEN
        EXECUTE 'SELECT array_agg(id) FROM messages'
                ' WHERE created_by = ANY($1) AND id = ANY($2) AND lease_owner = $3'
                '   AND status IN (''pending'', ''streaming'')'
            INTO v_held USING in_owners, $3 || $8, in_worker;
    END IF;

    IF v_held IS NOT NULL THEN
        -- 1. The rows of the messages whose status changes.
        IF $8 && v_held THEN
            FOR r IN EXECUTE
                'UPDATE messages AS m'
                ' SET status = b.status, content = coalesce(b.content, m.content),'
                '     last_event_id = b.last_event_id, error_code = b.error_code,'
                '     error_message = b.error_message, prompt_tokens = b.prompt_tokens,'
                '     completion_tokens = b.completion_tokens, finish_reason = b.finish_reason,'
                '     reasoning = coalesce(b.reasoning, m.reasoning),'
                '     reasoning_tokens = b.reasoning_tokens, reasoning_ms = b.reasoning_ms,'
                '     tool_calls = b.tool_calls::jsonb, updated_at = now(),'
                '     lease_owner = CASE WHEN b.status IN (''pending'', ''streaming'')'
                '                        THEN m.lease_owner END'
                ' FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[],'
                '             $6::text[], $7::text[], $8::integer[], $9::integer[], $10::text[],'
                '             $11::text[], $12::integer[], $13::integer[], $14::text[])'
                '     AS b (owner_id, id, status, content, last_event_id, error_code,'
                '           error_message, prompt_tokens, completion_tokens, finish_reason,'
                '           reasoning, reasoning_tokens, reasoning_ms, tool_calls)'
                ' WHERE m.created_by = ANY($15) AND m.id = ANY($16)'
                '   AND m.created_by = b.owner_id AND m.id = b.id AND b.status <> m.status'
                '   AND m.lease_owner = $17 AND m.status IN (''pending'', ''streaming'')'
                ' RETURNING m.created_by, m.project_id, m.id, m.updated_at, m.status'
                USING $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $19, $20, $21, $22,
                      in_owners, v_held, in_worker
            LOOP
                v_changed_ids := v_changed_ids || r.id;
                v_changed_at := v_changed_at || r.updated_at;
                IF r.status = ANY(v_terminal) THEN
                    v_ended_owners := v_ended_owners || r.created_by;
                    v_ended_projects := v_ended_projects || r.project_id;
                END IF;
            END LOOP;
        END IF;

        -- 2. The chunks, and the terminal markers of the ends (their keys are the fence
        -- against an end written meanwhile: the insert fails on event_chunks_pkey). Those
        -- already stored (a retried flush) are skipped. Only chunks count as stored: a
        -- terminal marker at a chunk's key is an end (a cancel, the reaper) that committed
        -- after v_held was read, in a snapshot this step does not share; skipped, the chunk
        -- would be reported written, and its events sent, though they are not stored.
        -- (A held message's own terminal write is not stored yet: it would have ended the row.)
        EXECUTE 'SELECT array_agg(message_id), array_agg(first_event_id) FROM event_chunks'
                ' WHERE owner_id = ANY($1) AND message_id = ANY($2) AND first_event_id = ANY($3)'
                '   AND kinds <> ''t'''
            INTO v_existing_ids, v_existing_firsts
            USING in_owners, v_held, $4 || $11;
        EXECUTE 'INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data)'
                ' SELECT c.owner_id, c.message_id, c.first_event_id, c.kinds, c.data FROM ('
                '     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::integer[], $4::text[],'
                '                          $5::text[])'
                '         AS n (owner_id, message_id, first_event_id, kinds, data)'
                '     UNION ALL'
                '     SELECT b.owner_id, b.id, b.last_event_id, ''t'', '''''
                '     FROM unnest($6::uuid[], $7::uuid[], $8::text[], $9::integer[])'
                '         AS b (owner_id, id, status, last_event_id)'
                '     WHERE b.status = ANY($10)'
                ' ) AS c'
                ' WHERE c.message_id = ANY($11)'
                '   AND (c.message_id, c.first_event_id) NOT IN ('
                '       SELECT * FROM unnest($12::uuid[], $13::integer[]))'
            USING $2, $3, $4, $5, $6, $7, $8, $9, $11, v_terminal, v_held,
                  coalesce(v_existing_ids, '{}'), coalesce(v_existing_firsts, '{}');

        -- 3. The users' running counts, locked in id order, then lowered by their ends; then
        -- the queue's hint: the ended answers' projects that have a queued answer.
        IF v_ended_owners <> '{}' THEN
            EXECUTE 'SELECT user_id FROM user_running WHERE user_id = ANY($1)'
                    ' ORDER BY user_id FOR NO KEY UPDATE'
                USING v_ended_owners;
            EXECUTE 'UPDATE user_running AS u'
                    ' SET running_generations = greatest(0, u.running_generations - f.n)'
                    ' FROM (SELECT o, count(*) AS n FROM unnest($1::uuid[]) AS o GROUP BY o) AS f'
                    ' WHERE u.user_id = ANY($1) AND u.user_id = f.o'
                USING v_ended_owners;
            EXECUTE 'SELECT CASE WHEN count(*) > 100 THEN ''*'''
                    '            ELSE string_agg(DISTINCT c.o || ''/'' || c.p, '','') END'
                    ' FROM unnest($1::uuid[], $2::uuid[]) AS c (o, p)'
                    ' WHERE EXISTS ('
                    '     SELECT 1 FROM messages AS q'
                    '     WHERE q.created_by = ANY($3) AND q.created_by = c.o'
                    '       AND q.project_id = c.p AND q.status = ''pending'''
                    '       AND q.lease_owner IS NULL)'
                    ' HAVING count(*) > 0'
                INTO v_hint USING v_ended_owners, v_ended_projects, in_owners;
        END IF;
    END IF;

    RETURN QUERY
        SELECT h.id, c.updated_at, v_hint
        FROM unnest(v_held) AS h (id)
        LEFT JOIN unnest(v_changed_ids, v_changed_at) AS c (id, updated_at) ON c.id = h.id
        UNION ALL
        SELECT a.id, a.updated_at, NULL::text
        FROM unnest(v_already_ids, v_already_at) AS a (id, updated_at);
END
