-- One schema for one PostgreSQL and for a Citus cluster (docs/scaling.md): every per-user table is
-- keyed by its owner first, so that on Citus a user's projects, messages, events and running
-- count live on one shard and each statement that serves a request is routed to one node.
-- On a database with the citus extension, `python -m server migrate` then distributes the tables
-- (orderly_distribute(), below; a no-op on plain PostgreSQL and once done).
--
-- The distribution column is the owner: messages.created_by (the project's owner, projects have
-- one), event_chunks.owner_id (replacing its project_id: the row keeps its size), projects.owner_id
-- and user_running.user_id. Keys and unique constraints lead with it (Citus requires it of them).

-- 1. The running count leaves users: users become a reference table (a copy on every node, every
-- write goes to all of them), and the count is written by every reservation and every end.
CREATE TABLE user_running (
    user_id              uuid PRIMARY KEY REFERENCES users (id),
    running_generations  integer NOT NULL DEFAULT 0
);

INSERT INTO user_running (user_id, running_generations)
SELECT id, running_generations FROM users;

ALTER TABLE users DROP COLUMN running_generations;

-- 2. Projects: keyed by (owner, id); messages reference them by both.
ALTER TABLE messages DROP CONSTRAINT messages_project_id_fkey;
ALTER TABLE projects DROP CONSTRAINT projects_pkey,
                     ADD CONSTRAINT projects_pkey PRIMARY KEY (owner_id, id);

-- 3. Messages: keyed by (owner, id); per-project keys lead with the owner.
ALTER TABLE messages DROP CONSTRAINT messages_pkey,
                     ADD CONSTRAINT messages_pkey PRIMARY KEY (created_by, id),
                     DROP CONSTRAINT messages_project_sequence_key,
                     ADD CONSTRAINT messages_project_sequence_key
                         UNIQUE (created_by, project_id, sequence),
                     ADD CONSTRAINT messages_project_fkey FOREIGN KEY (created_by, project_id)
                         REFERENCES projects (owner_id, id);
DROP INDEX messages_idempotency_key;
CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (created_by, project_id, client_request_id, role)
    WHERE client_request_id IS NOT NULL;

-- 4. Event chunks: the owner instead of the project (a message id names its project).
ALTER TABLE event_chunks ADD COLUMN owner_id uuid;
UPDATE event_chunks AS c SET owner_id = m.created_by
FROM messages AS m
WHERE m.project_id = c.project_id AND m.id = c.message_id;
DELETE FROM event_chunks WHERE owner_id IS NULL;  -- chunks of no message: unreadable anyway
ALTER TABLE event_chunks DROP CONSTRAINT event_chunks_pkey,
                         ALTER COLUMN owner_id SET NOT NULL,
                         ADD CONSTRAINT event_chunks_pkey
                             PRIMARY KEY (owner_id, message_id, first_event_id),
                         DROP COLUMN project_id;

-- 5. No function that reads a table runs inside a statement: on Citus such a statement runs on a
-- shard, where a function's query on a distributed table fails. The view computes a running
-- message's content and last event id with subqueries of its own (evaluated only for running
-- messages: a CASE runs its subplan only when its branch is taken).
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
       m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM messages AS m;

-- reserve_pair reads the running answers itself (sql/queries.sql says how it stays exact), and
-- aborts with this when one is running under on_running = reject (detail: "<id> <sequence>").
CREATE FUNCTION orderly_refuse(reason text, detail text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = reason, DETAIL = detail;
END
$$;

DROP FUNCTION orderly_running_answers(uuid, bigint, text, text);
DROP FUNCTION orderly_close(uuid, uuid, text, text, text, uuid);
DROP FUNCTION orderly_queue_hint(uuid[]);
DROP FUNCTION orderly_stored_content(uuid, uuid);
DROP FUNCTION orderly_last_stored_event(uuid, uuid);

-- The end of a running answer (sql/migrations/0009_lock_order.sql: why it is a function, and its
-- lock order), by owner. It is called as a statement of its own (close_message), never inside
-- one: on Citus it runs on the coordinator, each of its statements routed to the owner's node,
-- and its NOTIFYs are sent where the workers listen. o owner, p project, m message; caller: the
-- user who asks, or NULL for internal ends (then o comes from the message row).
CREATE FUNCTION orderly_close(o uuid, p uuid, m uuid, end_status text, code text, detail text,
                              caller uuid)
RETURNS SETOF messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    terminal integer;
    claim integer;
    ended messages;
    queued boolean;
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
    -- 3. The row, ended, with the content of its stored deltas.
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
        last_event_id = terminal,
        lease_owner = NULL,
        updated_at = now()
    WHERE x.created_by = o AND x.id = m
    RETURNING x.* INTO ended;
    -- 4. The user's running count, last.
    UPDATE user_running SET running_generations = greatest(0, running_generations - 1)
    WHERE user_id = o;
    -- An answer that ended may have been the last before a queued answer's turn: looked at once
    -- the user's row is locked (this statement's snapshot is taken now). The look and the NOTIFY
    -- are two statements: on Citus one statement would be routed whole to the owner's node, and
    -- its NOTIFY would stay there, where no worker listens (and a transaction that NOTIFYs on a
    -- node cannot be prepared there, which Citus's two-phase commit does).
    SELECT EXISTS (
        SELECT 1 FROM messages AS q
        WHERE q.created_by = o AND q.project_id = p AND q.status = 'pending'
          AND q.lease_owner IS NULL
    ) INTO queued;
    IF queued THEN
        PERFORM pg_notify('orderly_queue', o::text || '/' || p::text);
    END IF;
    -- Every worker: the writer stops its generator, listeners read the end.
    PERFORM pg_notify('orderly_cancel', m::text), pg_notify('orderly_events', m::text);
    RETURN NEXT ended;
END
$$;

-- On a database with the citus extension: distribute the tables, co-located by owner; the small
-- ones that every node reads are reference tables. Idempotent (a table already distributed is
-- left alone), so that `migrate` can call it on every run: installing citus on a database that
-- was migrated without it and running `migrate` again distributes it (the data moves to the
-- shards). A no-op on plain PostgreSQL. Citus's functions are called through EXECUTE: this body
-- must compile where they do not exist.
CREATE FUNCTION orderly_distribute() RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t record;
    fk record;
    kind text;
    todo text[] := '{}';
    fks text[][] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    FOR t IN SELECT * FROM (VALUES (1, 'users', NULL), (2, 'api_tokens', NULL),
                                   (3, 'workers', NULL), (4, 'user_running', 'user_id'),
                                   (5, 'projects', 'owner_id'), (6, 'messages', 'created_by'),
                                   (7, 'event_chunks', 'owner_id'))
                          AS v (n, name, col) ORDER BY n
    LOOP
        EXECUTE format('SELECT citus_table_type FROM citus_tables WHERE table_name = %L::regclass',
                       t.name)
            INTO kind;
        IF kind IS DISTINCT FROM (CASE WHEN t.col IS NULL THEN 'reference' ELSE 'distributed' END)
        THEN
            todo := todo || t.name::text;
        END IF;
    END LOOP;
    IF cardinality(todo) = 0 THEN
        RETURN;  -- done already: a second run changes nothing
    END IF;
    -- One connection per node for the whole transaction: a transaction that touches a reference
    -- table and distributed tables with foreign keys between them must not open several.
    SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    -- Foreign keys between these tables are dropped while they are distributed, and added back
    -- after: Citus refuses one between a distributed table and a table not distributed yet, and
    -- a local table that references a reference table is turned into a Citus local table, which
    -- create_distributed_table would then rebuild (dropping what depends on its row type, such
    -- as orderly_close).
    FOR fk IN
        SELECT c.conrelid::regclass::text AS tab, c.conname, pg_get_constraintdef(c.oid) AS def
        FROM pg_constraint AS c
        WHERE c.contype = 'f'
          AND c.conrelid::regclass::text IN ('users', 'api_tokens', 'workers', 'user_running',
                                             'projects', 'messages', 'event_chunks')
        ORDER BY c.conrelid::regclass::text = 'messages', c.conname
    LOOP
        fks := fks || ARRAY[[fk.tab, fk.conname, fk.def]];
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', fk.tab, fk.conname);
    END LOOP;
    FOR t IN SELECT * FROM (VALUES (1, 'users', NULL), (2, 'api_tokens', NULL),
                                   (3, 'workers', NULL), (4, 'user_running', 'user_id'),
                                   (5, 'projects', 'owner_id'), (6, 'messages', 'created_by'),
                                   (7, 'event_chunks', 'owner_id'))
                          AS v (n, name, col) ORDER BY n
    LOOP
        CONTINUE WHEN NOT t.name = ANY(todo);
        IF t.col IS NULL THEN
            EXECUTE format('SELECT create_reference_table(%L)', t.name);
        ELSIF t.name = 'user_running' THEN
            EXECUTE format('SELECT create_distributed_table(%L, %L)', t.name, t.col);
        ELSE
            EXECUTE format('SELECT create_distributed_table(%L, %L, colocate_with => %L)',
                           t.name, t.col, 'user_running');
        END IF;
    END LOOP;
    FOR i IN 1..coalesce(array_length(fks, 1), 0) LOOP
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', fks[i][1], fks[i][2], fks[i][3]);
    END LOOP;
    -- Functions that statements routed to a shard call must exist on every node.
    FOR t IN SELECT * FROM (VALUES ('orderly_refuse(text)'), ('orderly_refuse(text,text)'),
                                   ('orderly_uuid7()')) AS v (name)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_dist_object WHERE objid = t.name::regprocedure
        ) THEN
            PERFORM create_distributed_function(t.name);
        END IF;
    END LOOP;
END
$$;
