-- profile: all
-- Each row's defects (src/contract/defect.rs): the codes of what was wrong
-- with a login stored all the same (CONTRACT=lenient, the default), never
-- a value; NULL when clean, and on every row written before. A nullable
-- column without a default: a change of the catalog only, no rewrite of
-- any partition. Guarded, so that a migrate of a current table takes no
-- lock on it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = to_regclass('user_logins') AND attname = 'defects'
                     AND NOT attisdropped) THEN
        ALTER TABLE user_logins ADD COLUMN defects text[];
    END IF;
END
$$;

-- The write of the binaries of before `extra` (0013): retired, no release
-- calls it. Guarded (DROP ... IF EXISTS says a NOTICE on every new database).
DO $$
BEGIN
    IF to_regprocedure('login_etl_write(bigint, integer, integer, varchar[], varchar[], varchar[],
        varchar[], varchar[], varchar[], integer[], varchar[], date[], timestamptz[], smallint[])') IS NOT NULL THEN
        DROP FUNCTION login_etl_write(bigint, integer, integer, varchar[], varchar[], varchar[],
            varchar[], varchar[], varchar[], integer[], varchar[], date[], timestamptz[], smallint[]);
    END IF;
END
$$;
