-- profile: all
-- The narrow row (issue 75; docs/narrow-row.md): the rows in
-- user_logins_rows, layout C, partitioned by day of sent_at and keyed by
-- (sent_at, message_id); `user_logins` becomes a view with the columns and
-- types it always had, so what reads keeps working.
--
-- Fixed widths first, widest first, so no byte is padding; then the
-- variable ones. The tokens as their 32 bytes. An id is a uuid where it is
-- one in canonical lowercase form (every SQS message id, most user ids);
-- otherwise its text is kept beside it and the message's uuid is the first
-- 16 bytes of the SHA-256
-- of that text (the key needs one). The version's text only where
-- app_version does not render back to it (a suffix, a leading zero).
-- message_id is NULL only on a row from before login-etl (the upstream
-- table's), stored at its day's midnight.
CREATE TABLE IF NOT EXISTS user_logins_rows(
    sent_at             timestamptz NOT NULL,
    user_tag            bigint,
    app_version         integer,
    key_version         smallint NOT NULL DEFAULT 1,
    message_id          uuid,
    user_id             uuid,
    masked_ip           bytea,
    masked_device_id    bytea,
    device_type         varchar(32),
    locale              varchar(32),
    app_version_text    varchar(32),
    user_id_text        varchar(128),
    message_id_text     varchar(128),
    defects             text[],
    extra               jsonb
) PARTITION BY RANGE (sent_at);

-- The idempotency key: sent_at first, so each insert lands at the index's
-- right edge; no date (the partition key is sent_at itself), which is 14 B
-- on disk and 17 B of WAL a row (benches/floor.rs, floor_lean_dated).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = to_regclass('user_logins_rows_key') AND NOT indisvalid) THEN
        DROP INDEX user_logins_rows_key;
    END IF;
    IF to_regclass('user_logins_rows_key') IS NULL THEN
        CREATE UNIQUE INDEX user_logins_rows_key ON user_logins_rows (sent_at, message_id)
            WITH (fillfactor = 100);
    END IF;
END
$$;

-- The guards of migrations/0020 and 0027 on the new types: a token is 32
-- bytes (a length: no pattern to match), extra an object of scalars,
-- defects a list of codes. Built-in functions only: every role that writes
-- a row evaluates them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_rows'::regclass
                   AND conname = 'user_logins_rows_tokens_only') THEN
        ALTER TABLE user_logins_rows ADD CONSTRAINT user_logins_rows_tokens_only
            CHECK ((masked_ip IS NULL OR octet_length(masked_ip) = 32)
                   AND (masked_device_id IS NULL OR octet_length(masked_device_id) = 32));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_rows'::regclass
                   AND conname = 'user_logins_rows_extra_scalars') THEN
        ALTER TABLE user_logins_rows ADD CONSTRAINT user_logins_rows_extra_scalars
            CHECK (extra IS NULL OR (jsonb_typeof(extra) = 'object'
                                     AND NOT jsonb_path_exists(extra, '$.* ? (@.type() == "object" || @.type() == "array")')
                                     AND octet_length(extra::text) <= 65536));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_rows'::regclass
                   AND conname = 'user_logins_rows_defects_codes_only') THEN
        ALTER TABLE user_logins_rows ADD CONSTRAINT user_logins_rows_defects_codes_only
            CHECK (defects IS NULL
                   OR (cardinality(defects) BETWEEN 1 AND 32
                       AND array_position(defects, NULL) IS NULL
                       AND octet_length(array_to_string(defects, ',')) <= 2048
                       AND array_to_string(defects, ',')
                           ~ '^[A-Za-z_][A-Za-z0-9_]*\.[a-z_]+(?:,[A-Za-z_][A-Za-z0-9_]*\.[a-z_]+)*$'));
    END IF;
END
$$;

-- A database whose user_logins holds no row yet (a new one: 0001 made it
-- moments ago) takes the view at once. One with rows keeps its table:
-- `migrate` moves them online first (src/table/schema/narrow.rs), and
-- its cutover applies this file after renaming the old table aside.
DO $$
BEGIN
    -- Looked at again once locked: a row committed between the first look
    -- and the DROP would go with the table. A table with rows (the
    -- upgrade's prepare step applies this file beside it) is not locked:
    -- on a partitioned table the lock reaches every partition.
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'p'
       AND NOT EXISTS (SELECT 1 FROM user_logins) THEN
        LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE;
        IF NOT EXISTS (SELECT 1 FROM user_logins) THEN
            DROP TABLE user_logins;
        END IF;
    END IF;
END
$$;

-- The DEFAULT partition and the day partitions keep their names
-- (user_logins_default, user_logins_pYYYYMMDD): the partition functions,
-- maintain and the runbooks find them as before.
DO $$
BEGIN
    IF coalesce((SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')), 'v') = 'v'
       AND to_regclass('user_logins_default') IS NULL THEN
        CREATE TABLE user_logins_default PARTITION OF user_logins_rows DEFAULT;
    END IF;
END
$$;

-- The view user_logins over it is made after the migrations, from the
-- contract's column list (src/table/schema/view.rs: a column a later
-- migration adds shows there too), and its INSTEAD OF INSERT trigger with
-- login-etl's other triggers (src/table/schema/triggers.rs).
