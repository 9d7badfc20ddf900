-- profile: all
-- The masked columns hold tokens only (64 lowercase hex characters), and
-- `extra` an object of scalars, bounded in size (built-in functions only:
-- every role that writes a row may evaluate the check): what the
-- function writes, and now all a role that inserts rows itself can write
-- (a raw ip or device id fails the check). NOT VALID: rows written before
-- are not scanned; each new or updated row is checked (a re-key refuses a
-- value that is no token). New partitions copy the checks
-- (login_etl_ensure_partition, INCLUDING CONSTRAINTS).
--
-- The token check is a length and a negated class, not the regex
-- '^[0-9a-f]{64}$': the same rows pass, but PostgreSQL's regex engine
-- makes a bounded repetition cost about 16 µs a value, which tripled a
-- batch's cost per row against COPY into a plain table (docs/performance.md).
-- A schema that has the regex form gets this one, on the parent and on each
-- partition's own copy (ATTACH merged them), NOT VALID again: nothing scanned.
DO $$
DECLARE
    v_rel regclass;
BEGIN
    -- Not once user_logins is the view over user_logins_rows (0028).
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'p' THEN
        IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins'::regclass
                   AND conname = 'user_logins_tokens_only'
                   AND pg_get_constraintdef(oid) NOT LIKE '%octet_length%') THEN
            ALTER TABLE user_logins DROP CONSTRAINT user_logins_tokens_only;
            FOR v_rel IN SELECT c.conrelid::regclass FROM pg_constraint c
                         WHERE c.conname = 'user_logins_tokens_only'
                           AND c.conrelid IN (SELECT relid FROM pg_partition_tree('user_logins'))
            LOOP
                EXECUTE format('ALTER TABLE %s DROP CONSTRAINT user_logins_tokens_only', v_rel);
            END LOOP;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins'::regclass
                       AND conname = 'user_logins_tokens_only') THEN
            ALTER TABLE user_logins ADD CONSTRAINT user_logins_tokens_only
                CHECK ((masked_ip IS NULL OR (octet_length(masked_ip) = 64 AND masked_ip !~ '[^0-9a-f]'))
                       AND (masked_device_id IS NULL
                            OR (octet_length(masked_device_id) = 64 AND masked_device_id !~ '[^0-9a-f]'))) NOT VALID;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins'::regclass
                       AND conname = 'user_logins_extra_scalars') THEN
            ALTER TABLE user_logins ADD CONSTRAINT user_logins_extra_scalars
                CHECK (extra IS NULL OR (jsonb_typeof(extra) = 'object'
                                         AND NOT jsonb_path_exists(extra, '$.* ? (@.type() == "object" || @.type() == "array")')
                                         AND octet_length(extra::text) <= 65536)) NOT VALID;
        END IF;
    END IF;
END
$$;
