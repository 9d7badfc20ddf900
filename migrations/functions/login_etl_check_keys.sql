-- roles: ingest, erase, rotate
-- Records the check values of `for_version`'s keys where none is recorded
-- yet, and refuses (SQLSTATE LE004) keys whose check differs: a masking
-- key that is not the one the stored tokens are under, an erasure key that
-- is not the one the erasure list is keyed with. NULL: not checked (a
-- program that does not hold that key).
CREATE OR REPLACE FUNCTION login_etl_check_keys(for_version smallint, masking text, erasure text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
BEGIN
    SELECT * INTO v_state FROM user_logins_key_state;
    IF v_state.version <> for_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, not %s', v_state.version, for_version);
    END IF;
    IF masking IS NOT NULL AND v_state.masking_check IS DISTINCT FROM masking THEN
        IF v_state.masking_check IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the masking key of version %s is not the one the stored tokens are under (was the secret replaced instead of a version appended?)', for_version);
        END IF;
        UPDATE user_logins_key_state SET masking_check = masking WHERE masking_check IS NULL;
        -- Another program may have recorded its own meanwhile (a new
        -- statement sees what it committed).
        IF (SELECT s.masking_check FROM user_logins_key_state s) IS DISTINCT FROM masking THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the masking key of version %s is not the one another program recorded at the same moment', for_version);
        END IF;
    END IF;
    IF erasure IS NOT NULL AND v_state.erasure_check IS DISTINCT FROM erasure THEN
        IF v_state.erasure_check IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the erasure key of version %s is not the one the erasure list is keyed with', for_version);
        END IF;
        UPDATE user_logins_key_state SET erasure_check = erasure WHERE erasure_check IS NULL;
        IF (SELECT s.erasure_check FROM user_logins_key_state s) IS DISTINCT FROM erasure THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the erasure key of version %s is not the one another program recorded at the same moment', for_version);
        END IF;
    END IF;
END
$$;
