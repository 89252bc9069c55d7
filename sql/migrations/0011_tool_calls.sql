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
-- Idempotent, and the same on one PostgreSQL and on Citus (ALTER TABLE on a distributed table
-- is propagated to its shards).

ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS tools jsonb,
    ADD COLUMN IF NOT EXISTS tool_choice jsonb,
    ADD COLUMN IF NOT EXISTS tool_results jsonb,
    ADD COLUMN IF NOT EXISTS tool_calls jsonb;

ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_role_check;
ALTER TABLE messages
    ADD CONSTRAINT messages_role_check CHECK (role IN ('user', 'tool', 'assistant'));

-- Each column on its own role's rows only; NOT VALID: every existing row holds nulls there.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tool_columns_check;
ALTER TABLE messages
    ADD CONSTRAINT messages_tool_columns_check
        CHECK ((role = 'tool') = (tool_results IS NOT NULL)
               AND (role = 'assistant' OR tool_calls IS NULL)
               AND (role <> 'assistant' OR (tools IS NULL AND tool_choice IS NULL))) NOT VALID;

-- A stored event of kind `c` is a `tool_call` (server/events.py, KIND_OF).
ALTER TABLE event_chunks DROP CONSTRAINT IF EXISTS event_chunks_kinds_check;
ALTER TABLE event_chunks
    ADD CONSTRAINT event_chunks_kinds_check CHECK (kinds ~ '^([dpc]+|t)$') NOT VALID;

-- The reference for the reads of queries.sql: the running content as in 0010, the new columns
-- last.
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
       m.prompt_tokens, m.completion_tokens, m.finish_reason, m.tool_calls, m.tool_results
FROM messages AS m;
