-- roles: erase, rotate
-- Holds one of login-etl's locks (user_logins_locks, migrations/0022)
-- shared until the caller's transaction ends: forget's and a re-key's
-- statements on the DEFAULT partition's ranges hold `migration`, so
-- maintain moves no row from under them; forget holds `key_version`, so no
-- rotation switches under it. Only these roles may (and only shared);
-- no other role holds one at all.
CREATE OR REPLACE FUNCTION login_etl_lock_shared(lock_name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF lock_name NOT IN ('migration', 'key_version') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('no login-etl lock named %L', lock_name);
    END IF;
    PERFORM login_etl_hold_lock(lock_name, false);
END
$$;
