-- Regenerate (docs/api.md, "Regenerate"): an answer may be written again for the same question,
-- as a new *variant* of its sequence; the earlier variants are kept. A sequence holds one input
-- message (user or tool) or one or more assistant variants, numbered from 1 in the order they
-- were made; exactly one of them is *current* (is_current): the one history shows and the
-- context of later turns uses. Only the latest answer of a project can be regenerated, and only
-- its current variant can be switched, so the variants of an earlier sequence are fixed once a
-- later turn was sent.
--
-- The key (created_by, project_id, sequence) becomes (created_by, project_id, sequence, variant),
-- and one current row per sequence is a partial unique index, which also serves every read of
-- current rows. A row that exists has variant 1 and is current: the columns' defaults, so adding
-- them rewrites nothing.
--
-- Idempotent, on one PostgreSQL and on Citus, in the way of 0011 and 0012: one EXECUTE per
-- change, IF [NOT] EXISTS everywhere.

DO $$
DECLARE
    step text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    END IF;
    FOREACH step IN ARRAY ARRAY[
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS variant integer NOT NULL DEFAULT 1',
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS is_current boolean NOT NULL DEFAULT true',
        'ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_variant_check',
        -- Only an answer has variants.
        'ALTER TABLE messages ADD CONSTRAINT messages_variant_check'
        ' CHECK (variant >= 1 AND (variant = 1 OR role = ''assistant''))',
        'ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_project_sequence_key',
        'ALTER TABLE messages ADD CONSTRAINT messages_project_sequence_key'
        ' UNIQUE (created_by, project_id, sequence, variant)',
        'CREATE UNIQUE INDEX IF NOT EXISTS messages_current_sequence'
        ' ON messages (created_by, project_id, sequence) WHERE is_current'
    ]
    LOOP
        EXECUTE step;
    END LOOP;
END
$$;

-- A new variant of the project's latest answer, reserved the way reserve_pair reserves a pair
-- (sql/queries.sql: the same refusals, the same on_running under the same lock, the same queued
-- start), and made current. Returns the input message and the new variant; no row when the
-- project or the message is not the owner's (or the message is not an answer).
-- Lock order (docs/architecture.md, "Lock order"): the project's row, then the current variant's
-- row (it stops being current), then the new row's keys, then the user's running count: the
-- order of the statements that end answers after the project's row, so that no flush or end of
-- the variant being replaced waits for this in a cycle.
-- Refusals, in order: a repeated client_request_id (raised as the unique violation of
-- messages_idempotency_key, as an insert of a repeated key raises it: the caller finds the
-- variant), not the latest answer, an expired heartbeat, the cap, reject.
-- On Citus it runs on the coordinator, as orderly_close does: its statements are routed to the
-- owner's node, one at a time (a regenerate is rare; the hot path's reservation is a delegated
-- call); it sends no NOTIFY (the queue's hint comes from the answer's end).
CREATE OR REPLACE FUNCTION orderly_regenerate(o uuid, p uuid, target uuid, request text,
                                              worker uuid, cap integer, policy text)
RETURNS SETOF messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    last_seq bigint;
    seq bigint;
    next_variant integer;
    ahead bigint := 0;
    newest text;
    changed bigint;
    fresh uuid := orderly_uuid7();
    input messages;
    answer messages;
BEGIN
    -- 1. The project's row: the lock every reservation of the project takes first.
    UPDATE projects SET last_sequence = last_sequence
    WHERE owner_id = o AND id = p
    RETURNING last_sequence INTO last_seq;
    IF last_seq IS NULL THEN
        RETURN;
    END IF;
    -- 2. A repeated key: the caller finds what it made.
    IF request IS NOT NULL AND EXISTS (
        SELECT 1 FROM messages AS k
        WHERE k.created_by = o AND k.project_id = p AND k.client_request_id = request
          AND k.role = 'assistant'
    ) THEN
        RAISE unique_violation USING CONSTRAINT = 'messages_idempotency_key',
            MESSAGE = 'duplicate key value violates unique constraint "messages_idempotency_key"';
    END IF;
    -- 3. The answer: any variant of the project's latest answer.
    SELECT x.sequence INTO seq
    FROM messages AS x
    WHERE x.created_by = o AND x.project_id = p AND x.id = target AND x.role = 'assistant';
    IF seq IS NULL THEN
        RETURN;
    END IF;
    IF seq <> last_seq THEN
        PERFORM orderly_refuse('not_latest_answer');
    END IF;
    -- 4. The current variant gives way (its row, locked: it waits for a flush of it).
    UPDATE messages AS x SET is_current = false
    WHERE x.created_by = o AND x.project_id = p AND x.sequence = seq AND x.is_current;
    SELECT max(x.variant) + 1 INTO next_variant
    FROM messages AS x
    WHERE x.created_by = o AND x.project_id = p AND x.sequence = seq;
    -- 5. The running answers the policy looks at (a running variant of this sequence too).
    IF policy IN ('reject', 'enqueue') THEN
        SELECT count(*), (array_agg(x.id || ' ' || x.sequence
                                    ORDER BY x.sequence DESC, x.variant DESC))[1]
        INTO ahead, newest
        FROM messages AS x
        WHERE x.created_by = o AND x.project_id = p AND x.status IN ('pending', 'streaming');
    END IF;
    -- 6. The new variant, current; a queued one's log starts with its `queued` event.
    IF policy = 'enqueue' AND ahead > 0 THEN
        INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data)
        VALUES (o, fresh, 2, 'p',
                '{"stage":"queued","message":"Queued behind ' || ahead || ' earlier answer'
                || CASE WHEN ahead = 1 THEN '' ELSE 's' END || '","percent":null}');
    ELSE
        ahead := 0;
    END IF;
    INSERT INTO messages AS m (project_id, id, sequence, variant, is_current, role, content,
                               status, image_urls, client_request_id, created_by, last_event_id,
                               lease_owner, queued_at)
    VALUES (p, fresh, seq, next_variant, true, 'assistant', '', 'pending', '{}', request, o,
            CASE WHEN ahead > 0 THEN 2 ELSE 1 END,
            CASE WHEN ahead > 0 THEN NULL ELSE worker END,
            CASE WHEN ahead > 0 THEN now() END)
    RETURNING m.* INTO answer;
    -- 7. The worker's heartbeat, the user's cap, reject: as reserve_pair refuses them.
    IF cap < 1 THEN
        PERFORM orderly_refuse('too_many_running_generations');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM workers AS w WHERE w.id = worker AND w.expires_at > now()) THEN
        PERFORM orderly_refuse('heartbeat_expired');
    END IF;
    INSERT INTO user_running AS c (user_id, running_generations) VALUES (o, 1)
    ON CONFLICT (user_id) DO UPDATE SET running_generations = c.running_generations + 1
    WHERE c.running_generations < cap;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed = 0 THEN
        PERFORM orderly_refuse('too_many_running_generations');
    END IF;
    IF policy = 'reject' AND newest IS NOT NULL THEN
        PERFORM orderly_refuse('answer_running', newest);
    END IF;
    SELECT x.* INTO input
    FROM messages AS x
    WHERE x.created_by = o AND x.project_id = p AND x.sequence = seq - 1;
    RETURN NEXT input;
    RETURN NEXT answer;
END
$$;

-- The current variant of the project's latest answer becomes `target` (a variant of it); its
-- row. No row: not the owner's project or message, or not an
-- answer. Refused (not_latest_answer) for an earlier sequence: later turns were sent with its
-- current variant as their context. Lock order: the project's row, then the variants' rows.
CREATE OR REPLACE FUNCTION orderly_choose_variant(o uuid, p uuid, target uuid)
RETURNS SETOF messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    last_seq bigint;
    seq bigint;
BEGIN
    UPDATE projects SET last_sequence = last_sequence
    WHERE owner_id = o AND id = p
    RETURNING last_sequence INTO last_seq;
    IF last_seq IS NULL THEN
        RETURN;
    END IF;
    SELECT x.sequence INTO seq
    FROM messages AS x
    WHERE x.created_by = o AND x.project_id = p AND x.id = target AND x.role = 'assistant';
    IF seq IS NULL THEN
        RETURN;
    END IF;
    IF seq <> last_seq THEN
        PERFORM orderly_refuse('not_latest_answer');
    END IF;
    -- Off first, then on: one current row at every moment the index checks.
    UPDATE messages AS x SET is_current = false
    WHERE x.created_by = o AND x.project_id = p AND x.sequence = seq AND x.is_current
      AND x.id <> target;
    UPDATE messages AS x SET is_current = true
    WHERE x.created_by = o AND x.project_id = p AND x.id = target AND NOT x.is_current;
    RETURN QUERY
    SELECT x.* FROM messages AS x
    WHERE x.created_by = o AND x.project_id = p AND x.id = target;
END
$$;
