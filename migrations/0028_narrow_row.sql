-- profile: all
-- The narrow row (issue 75; docs/narrow-row.md): the rows in
-- user_logins_rows, layout C, partitioned by day of sent_at and keyed by
-- (sent_at, message_id); `user_logins` becomes a view with the columns and
-- types it always had, so what reads keeps working.
--
-- Fixed widths first, widest first, so no byte is padding; then the
-- variable ones. The tokens as their 32 bytes. An id is a uuid where it is
-- one in canonical lowercase form (every SQS message id, most user ids);
-- otherwise its text is kept beside it and the message's uuid is the md5
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
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'p' THEN
        -- Locked before it is looked at: a row committed between the look
        -- and the DROP would go with the table.
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

-- What reads user_logins sees the columns and types it always saw, in the
-- same order: the tokens in hex, the ids as text, create_date the UTC day
-- of sent_at (a filter on sent_at prunes partitions, one on create_date
-- cannot), the version's text rendered where it was not stored. sent_at
-- as stored: an expression over it would keep a filter on it from
-- pruning. Built-in functions only: a view's caller needs EXECUTE on each.
DO $$
BEGIN
    IF to_regclass('user_logins') IS NULL THEN
        CREATE VIEW user_logins AS
        SELECT coalesce(r.user_id_text, r.user_id::text)::varchar(128) AS user_id,
               r.device_type,
               encode(r.masked_ip, 'hex')::varchar(256) AS masked_ip,
               encode(r.masked_device_id, 'hex')::varchar(256) AS masked_device_id,
               r.locale,
               r.app_version,
               (r.sent_at AT TIME ZONE 'UTC')::date AS create_date,
               coalesce(r.message_id_text, r.message_id::text)::varchar(128) AS message_id,
               CASE WHEN r.message_id IS NULL OR r.app_version_text IS NOT NULL THEN r.app_version_text
                    ELSE (r.app_version / 1000000 || '.' || r.app_version / 1000 % 1000 || '.'
                          || r.app_version % 1000)::varchar(32) END AS app_version_text,
               r.sent_at,
               r.key_version,
               r.extra,
               r.defects,
               r.user_tag
          FROM user_logins_rows r;
    END IF;
END
$$;


-- What inserts into user_logins by name (the previous release's function,
-- and a write that waited on the upgrade's cutover) lands in
-- user_logins_rows (migrations/functions/login_etl_write_through.sql).
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'v'
       AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'user_logins'::regclass
                       AND tgname = 'user_logins_write_through') THEN
        CREATE TRIGGER user_logins_write_through INSTEAD OF INSERT ON user_logins
            FOR EACH ROW EXECUTE FUNCTION login_etl_write_through();
    END IF;
END
$$;
