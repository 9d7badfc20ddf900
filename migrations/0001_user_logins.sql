-- profile: all
-- login-etl schema. Idempotent: creates the upstream table if it is missing
-- and upgrades an existing upstream table in place. Applied by
-- `login-etl migrate` (make migrate) or at cold start with RUN_MIGRATIONS=true,
-- inside one transaction holding an advisory lock.

-- A new table is range-partitioned by create_date (0004_partitions.sql
-- makes its partitions): the upstream columns, unchanged, so existing
-- queries keep working, and login-etl's. An existing upstream table
-- (unpartitioned) is first converted by `login-etl migrate`
-- (src/table/schema/convert.rs), which adds the same columns.
DO $$
BEGIN
    IF to_regclass('user_logins') IS NULL THEN
        CREATE TABLE user_logins(
            user_id             varchar(128),
            device_type         varchar(32),
            masked_ip           varchar(256),
            masked_device_id    varchar(256),
            locale              varchar(32),
            app_version         integer,
            create_date         date,
            -- The SQS message id (of the original message, for a copy
            -- redriven from the DLQ): with sent_at, the idempotency key.
            message_id          varchar(128),
            -- The version exactly as received; app_version holds its sortable encoding.
            app_version_text    varchar(32),
            -- The message's SentTimestamp (of the original, for a redriven
            -- copy): the same on every redelivery, so create_date, its UTC
            -- date, is too. NULL only on rows from before login-etl.
            sent_at             timestamptz
        ) PARTITION BY RANGE (create_date);
    END IF;
END
$$;

-- Each row's masking-key version (migrations/0006, login-etl rotate-key):
-- the proof of progress of a re-key, as a row is re-keyed in the statement
-- that moves it to the next version, so never twice. A constant default:
-- no table rewrite; rows from before are version 1.
-- Only when missing: ALTER TABLE locks the table even when it changes nothing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'user_logins'::regclass
                   AND attname = 'key_version' AND NOT attisdropped) THEN
        ALTER TABLE user_logins ADD COLUMN key_version smallint NOT NULL DEFAULT 1;
    END IF;
END
$$;

-- The idempotency key, made on every partition. It leads with sent_at,
-- which grows with time: each insert lands at the right edge of the index
-- instead of on a random leaf (a random message id dirties a new 8 kB page
-- per row, and after each checkpoint logs it whole to the WAL). It
-- includes create_date because a unique index of a partitioned table must
-- hold the partition key. docs/performance.md has the measured alternatives.
-- An INVALID index under this name (made ON ONLY and never completed, or
-- left by a failed build) would satisfy IF NOT EXISTS and arbitrate
-- nothing: drop it so that it is built again.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = to_regclass('user_logins_key') AND NOT indisvalid) THEN
        DROP INDEX user_logins_key;
    END IF;
END
$$;
-- Only when missing: CREATE INDEX IF NOT EXISTS takes its SHARE lock,
-- which waits for every write in flight and holds up every new one, before
-- it looks whether the index exists.
DO $$
BEGIN
    -- Not once user_logins is the view over user_logins_rows (0028).
    IF to_regclass('user_logins_key') IS NULL AND (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'p' THEN
        CREATE UNIQUE INDEX user_logins_key ON user_logins (sent_at, message_id, create_date);
    END IF;
END
$$;
