-- roles: erase
-- profile: full
-- `login-etl forget`'s first step, under its moment's lock: the user on the
-- erasure list at the database's key version (`user_key`; not again when
-- a re-key still lists them under the previous version, `previous`), and
-- forget_begun audited, in the caller's transaction. Its rows can be
-- deleted (login_etl_forget_rows) only once that transaction is committed,
-- so no row goes without a durable record. LE002: the key version moved.
CREATE OR REPLACE FUNCTION login_etl_forget_begin(user_key varchar, previous varchar, key_version smallint,
    caller text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM login_etl_forget_lock();
    IF coalesce((SELECT k.version FROM user_logins_key_state k), 1) IS DISTINCT FROM key_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = 'the masking key''s version changed (login-etl rotate-key): run forget again';
    END IF;
    INSERT INTO user_logins_erased (user_key, key_version)
        SELECT login_etl_forget_begin.user_key, login_etl_forget_begin.key_version
        WHERE NOT EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.user_key = previous)
        ON CONFLICT ON CONSTRAINT user_logins_erased_pkey DO NOTHING;
    PERFORM login_etl_audit('forget_begun', caller, login_etl_forget_begin.user_key, NULL, NULL, NULL);
END
$$;
