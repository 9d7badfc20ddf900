-- roles: erase
-- profile: full
-- The moment's lock of `login-etl forget` (src/privacy/forget/lock.rs):
-- the key-version lock shared, then SHARE ROW EXCLUSIVE on the parent
-- user_logins alone, which waits for the write transactions in flight
-- and theirs for it; held to the end of the caller's transaction, each
-- wait bounded by the caller's lock_timeout. The erase role holds no
-- DELETE on the table, so this is the strongest lock it can take.
CREATE OR REPLACE FUNCTION login_etl_forget_lock()
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM login_etl_hold_lock('key_version', false);
    LOCK TABLE ONLY user_logins_rows IN SHARE ROW EXCLUSIVE MODE;
END
$$;
