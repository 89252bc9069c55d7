-- New messages get time-ordered ids (UUID version 7: 48 bits of Unix milliseconds, then random
-- bits), not random ones (version 4). A random key sends every insert to a random leaf page of
-- each index it is in: the messages' primary key, and event_chunks' (project_id, message_id,
-- first_event_id). After each checkpoint the first change to a page writes the whole page to the
-- WAL (full_page_writes), so random keys cost a full page per new message and per index; ordered
-- ones keep inserting into the same few pages (in a benchmark run, after steps that had grown
-- the tables, the 2 KB answers of the long-answer pair paid 8.3 bytes of full-page images per
-- answer byte on PostgreSQL 15: docs/benchmarks.md). Ids stay opaque UUIDs to clients.
-- (PostgreSQL 18 has uuidv7(); this works from 13 on.)
CREATE FUNCTION orderly_uuid7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(
            set_bit(
                overlay(
                    uuid_send(gen_random_uuid())
                    PLACING substring(
                        int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                        FROM 3
                    )
                    FROM 1 FOR 6
                ),
                52, 1
            ),
            53, 1
        ),
        'hex'
    )::uuid
$$;

-- reserve_pair names both ids itself (with this function); the default is for any other insert.
ALTER TABLE messages ALTER COLUMN id SET DEFAULT orderly_uuid7();
