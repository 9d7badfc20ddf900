-- The masked columns hold tokens only (64 lowercase hex characters), and
-- `extra` an object of scalars, bounded in size (built-in functions only:
-- every role that writes a row may evaluate the check): what the
-- function writes, and now all a role that inserts rows itself can write
-- (a raw ip or device id fails the check). NOT VALID: rows written before
-- are not scanned; each new or updated row is checked (a re-key refuses a
-- value that is no token). New partitions copy the checks
-- (login_etl_ensure_partition, INCLUDING CONSTRAINTS).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins'::regclass
                   AND conname = 'user_logins_tokens_only') THEN
        ALTER TABLE user_logins ADD CONSTRAINT user_logins_tokens_only
            CHECK ((masked_ip IS NULL OR masked_ip ~ '^[0-9a-f]{64}$')
                   AND (masked_device_id IS NULL OR masked_device_id ~ '^[0-9a-f]{64}$')) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins'::regclass
                   AND conname = 'user_logins_extra_scalars') THEN
        ALTER TABLE user_logins ADD CONSTRAINT user_logins_extra_scalars
            CHECK (extra IS NULL OR (jsonb_typeof(extra) = 'object'
                                     AND NOT jsonb_path_exists(extra, '$.* ? (@.type() == "object" || @.type() == "array")')
                                     AND octet_length(extra::text) <= 65536)) NOT VALID;
    END IF;
END
$$;
