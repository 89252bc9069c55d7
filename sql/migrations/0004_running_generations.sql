-- A per-user count of running generations, kept by the statements that start and end them, so
-- that the per-user concurrency cap is checked atomically inside the reservation statement.

ALTER TABLE users ADD COLUMN running_generations integer NOT NULL DEFAULT 0;

UPDATE users AS u
SET running_generations = (
    SELECT count(*) FROM messages AS m
    WHERE m.created_by = u.id AND m.role = 'assistant' AND m.status IN ('pending', 'streaming')
);

-- Raised inside a statement to abort it (and everything it changed) with a stable message that
-- server/db.py turns into a domain error.
CREATE FUNCTION orderly_refuse(reason text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = reason;
END
$$;
