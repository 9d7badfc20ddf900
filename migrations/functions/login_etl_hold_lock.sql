-- roles: none
-- Holds one of login-etl's locks (user_logins_locks, migrations/0022)
-- until the caller's transaction ends, exclusive or shared; the owner's
-- functions call it. A lock whose row is gone would hold nothing, and the
-- races it keeps out would come back without a word: it refuses instead
-- (migrate puts the rows back, doctor names one that is missing).
CREATE OR REPLACE FUNCTION login_etl_hold_lock(lock_name text, exclusive boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF exclusive THEN
        PERFORM 1 FROM user_logins_locks l WHERE l.name = lock_name FOR UPDATE;
    ELSE
        PERFORM 1 FROM user_logins_locks l WHERE l.name = lock_name FOR SHARE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('login-etl''s lock %L has no row in user_logins_locks, so it would hold nothing, and nothing was changed: '
                'run login-etl migrate as the migrate role (it puts the row back), then login-etl doctor (someone with the owner''s rights deleted it)', lock_name);
    END IF;
END
$$;
