-- login-etl schema. Idempotent: creates the upstream table if it is missing
-- and upgrades an existing upstream table in place. Applied by
-- `login-etl migrate` (make migrate) or at cold start with RUN_MIGRATIONS=true,
-- inside one transaction holding an advisory lock.

-- The upstream DDL, unchanged, so existing tables and queries keep working.
CREATE TABLE IF NOT EXISTS user_logins(
    user_id             varchar(128),
    device_type         varchar(32),
    masked_ip           varchar(256),
    masked_device_id    varchar(256),
    locale              varchar(32),
    app_version         integer,
    create_date         date
);

-- The SQS message id: the idempotency key that makes redelivery harmless.
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS message_id varchar(128);
-- The version exactly as received; app_version holds its sortable encoding.
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS app_version_text varchar(32);

-- Rows loaded before login-etl have a NULL message_id; a unique index allows
-- any number of NULLs, so the upgrade never fails on old data.
-- On a very large existing table, build this index beforehand with
-- CREATE UNIQUE INDEX CONCURRENTLY (see README) to avoid blocking writers.
-- A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an INVALID index under
-- this name, which IF NOT EXISTS would accept and ON CONFLICT cannot use:
-- drop it so it is built again.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = to_regclass('user_logins_message_id_key')
                 AND NOT (indisvalid AND indisready)) THEN
        DROP INDEX user_logins_message_id_key;
    END IF;
END
$$;
CREATE UNIQUE INDEX IF NOT EXISTS user_logins_message_id_key ON user_logins (message_id);
