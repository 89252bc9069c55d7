-- Tool calls (docs/api.md, "Tool calls"). A generation's input message is now a user message or
-- a `tool` message (the results of the calls of the answer just before it), at 2k-1 either way:
-- the pair invariant holds with roles (user or tool, assistant).
--
-- On the input message (user or tool): the request's `tools` and `tool_choice`, as sent (they go
-- upstream again with a tool-result turn that does not repeat them); on a tool message, its
-- `tool_results` ([{"tool_call_id", "content"}], in the order they were sent). On the answer:
-- its `tool_calls` ([{"id", "name", "arguments"}]), written with its final status, null when it
-- made none. jsonb, nullable, no default: adding them rewrites nothing, and a row without tools
-- pays one null bit each.
--
-- Applied after 0011 (reasoning): the kinds check keeps its 'r' and takes 'c'; message_view
-- keeps 0011's columns and adds these last; orderly_close (0011) is unchanged (tool calls are
-- written by the worker's end, in the flush, never assembled by cancel or the reaper).
--
-- Idempotent, on one PostgreSQL and on Citus (tables already distributed or not), in the way of
-- 0011: one EXECUTE per change, IF NOT EXISTS for the columns, each constraint dropped if there
-- and added back alone in its ALTER TABLE, CREATE OR REPLACE for the view.

DO $$
DECLARE
    step text;
BEGIN
    -- See 0011: DDL on a distributed table goes to its shards as the text of its command, which
    -- must be that command alone; one connection per node for the whole migration.
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    END IF;
    FOREACH step IN ARRAY ARRAY[
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS tools jsonb',
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS tool_choice jsonb',
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS tool_results jsonb',
        'ALTER TABLE messages ADD COLUMN IF NOT EXISTS tool_calls jsonb',
        'ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_role_check',
        'ALTER TABLE messages ADD CONSTRAINT messages_role_check'
        ' CHECK (role IN (''user'', ''tool'', ''assistant''))',
        -- Each column on its own role's rows only; NOT VALID: every existing row holds nulls
        -- there.
        'ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tool_columns_check',
        'ALTER TABLE messages ADD CONSTRAINT messages_tool_columns_check'
        ' CHECK ((role = ''tool'') = (tool_results IS NOT NULL)'
        ' AND (role = ''assistant'' OR tool_calls IS NULL)'
        ' AND (role <> ''assistant'' OR (tools IS NULL AND tool_choice IS NULL))) NOT VALID',
        -- A stored event of kind ''c'' is a `tool_call` (server/events.py, KIND_OF); ''r''
        -- (0011) and ''d'', ''p'' stay. NOT VALID: every row holds letters the new pattern
        -- allows.
        'ALTER TABLE event_chunks DROP CONSTRAINT IF EXISTS event_chunks_kinds_check',
        'ALTER TABLE event_chunks ADD CONSTRAINT event_chunks_kinds_check'
        ' CHECK (kinds ~ ''^([dprc]+|t)$'') NOT VALID'
    ]
    LOOP
        EXECUTE step;
    END LOOP;
END
$$;

-- The reference for the reads of queries.sql: 0011's view (running content and reasoning from
-- the stored events), the tool columns last.
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
       m.reasoning_tokens, m.reasoning_ms, m.tool_calls, m.tool_results
FROM messages AS m;
