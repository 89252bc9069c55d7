-- Users and their tokens as the operator manages them from the command line (server/accounts.py):
-- `token list`, `token revoke --id`, `user remove`. Kept apart from queries.sql, which holds what
-- the service runs; these run only in the CLI.

-- name: list_tokens
-- Every token (its hash is never shown: the token itself cannot be recovered), newest first;
-- $1 a username, or NULL for everyone's.
SELECT t.id, u.username, t.created_at, t.revoked_at
FROM api_tokens AS t JOIN users AS u ON u.id = t.user_id
WHERE $1::text IS NULL OR u.username = $1
ORDER BY t.created_at DESC, t.id;

-- name: revoke_token_by_id
UPDATE api_tokens SET revoked_at = now()
WHERE id = $1 AND revoked_at IS NULL
RETURNING id;

-- name: lock_projects_of_user
-- A removal locks the user's projects, then the user: the order reserve_pair takes them in, so a
-- reservation running at the same moment cannot deadlock with it.
-- $1 the owner's id (user_id_of): on Citus it names the shard, where a locking read must be on
-- one.
SELECT p.id
FROM projects AS p
WHERE p.owner_id = $1
ORDER BY p.id
FOR UPDATE OF p;

-- name: user_id_of
SELECT id FROM users WHERE username = $1;

-- name: lock_user
-- With it locked, no reservation of the user can start (reserve_pair updates the row) and no
-- project of theirs can be created (the foreign key takes a share lock on it).
SELECT id FROM users WHERE username = $1 FOR UPDATE;

-- name: running_answers_of_user
SELECT count(*)
FROM messages
WHERE created_by = $1 AND status IN ('pending', 'streaming');

-- name: remove_user
-- Everything of the user at once: the foreign keys are checked at the end of the statement, when
-- the rows that reference each other are all gone.
-- (Every table of the user is keyed by the owner: messages.created_by is the projects' owner.)
WITH chunks AS (
    DELETE FROM event_chunks WHERE owner_id = $1 RETURNING 1
), removed_messages AS (
    DELETE FROM messages WHERE created_by = $1 RETURNING 1
), removed_projects AS (
    DELETE FROM projects WHERE owner_id = $1 RETURNING 1
), removed_count AS (
    DELETE FROM user_running WHERE user_id = $1 RETURNING 1
), removed_tokens AS (
    DELETE FROM api_tokens WHERE user_id = $1 RETURNING 1
), removed_user AS (
    DELETE FROM users WHERE id = $1 RETURNING 1
)
SELECT (SELECT count(*) FROM removed_projects) AS projects,
       (SELECT count(*) FROM removed_messages) AS messages,
       (SELECT count(*) FROM removed_tokens) AS tokens,
       (SELECT count(*) FROM chunks) AS chunks,
       (SELECT count(*) FROM removed_user) AS users;
