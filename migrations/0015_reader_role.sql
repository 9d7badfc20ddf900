-- profile: all
-- The analysts' role (login-etl grants --role reader): a kind of the role
-- registry, so that every migrate gives it what it needs (SELECT on
-- user_logins) and doctor holds it to that. Guarded: a migrate of a
-- current registry changes nothing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = to_regclass('user_logins_roles') AND contype = 'c'
                     AND pg_get_constraintdef(oid) LIKE '%reader%') THEN
        ALTER TABLE user_logins_roles DROP CONSTRAINT IF EXISTS user_logins_roles_kind_check;
        ALTER TABLE user_logins_roles ADD CONSTRAINT user_logins_roles_kind_check
            CHECK (kind IN ('ingest', 'reveal', 'erase', 'maintain', 'audit', 'rotate', 'upgrade', 'reader'));
    END IF;
END
$$;
