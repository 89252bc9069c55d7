-- What the generator reported of a successful answer: the tokens it counted (usage) and why it
-- stopped (finish_reason: stop, length, content_filter, ... as the model server said). Written
-- once, by the statement that writes the answer's final status; null for an answer that did not
-- succeed, and for one whose generator reported nothing.
--
-- usage is two integer columns rather than one jsonb value: each is 4 bytes with no key names
-- stored per row, the database holds them to a type and a range (a model server's numbers are
-- checked against the same range before they reach the flush, see server/models.py), and they
-- add up with sum() for a per-user or per-project account without parsing JSON. A new kind of
-- count (cached or reasoning tokens, say) is one more nullable column, as cheap as these.
--
-- Nullable columns without a default: adding them rewrites nothing. The constraints are NOT
-- VALID because every existing row holds nulls there, which satisfies them: validating would
-- only scan the whole table under this migration's exclusive lock. New rows are checked.

ALTER TABLE messages
    ADD COLUMN prompt_tokens integer,
    ADD COLUMN completion_tokens integer,
    ADD COLUMN finish_reason text;

ALTER TABLE messages
    ADD CONSTRAINT messages_usage_check
        CHECK ((prompt_tokens IS NULL) = (completion_tokens IS NULL)
               AND prompt_tokens >= 0 AND completion_tokens >= 0) NOT VALID,
    ADD CONSTRAINT messages_finish_reason_check
        CHECK (length(finish_reason) BETWEEN 1 AND 64) NOT VALID,
    -- Only a successful answer carries them: an end by cancel, the reaper, a shutdown or a
    -- failure reports nothing of the kind.
    ADD CONSTRAINT messages_outcome_check
        CHECK (status = 'success' OR (prompt_tokens IS NULL AND finish_reason IS NULL)) NOT VALID;

-- The view every read goes through, with the new columns at the end (as queries.sql lists them).
CREATE OR REPLACE VIEW message_view AS
SELECT m.id, m.project_id, m.sequence, m.role, m.kind,
       CASE WHEN m.status IN ('pending', 'streaming')
            THEN orderly_stored_content(m.project_id, m.id) ELSE m.content END AS content,
       m.status, m.image_urls, m.client_request_id, m.created_by, m.created_at, m.updated_at,
       m.error_code, m.error_message,
       CASE WHEN m.status IN ('pending', 'streaming') AND m.role = 'assistant'
            THEN orderly_last_stored_event(m.project_id, m.id)
            ELSE m.last_event_id END AS last_event_id,
       m.prompt_tokens, m.completion_tokens, m.finish_reason
FROM messages AS m;
