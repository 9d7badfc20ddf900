-- roles: maintain
-- Deletes the DEFAULT partition's rows older than `cutoff` (past
-- retention: they get no partition). Returns how many.
CREATE OR REPLACE FUNCTION login_etl_purge_default(cutoff date)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
BEGIN
    IF cutoff > (now() AT TIME ZONE 'UTC')::date THEN
        RAISE EXCEPTION 'a retention cutoff after today (%) would delete current rows', cutoff
            USING ERRCODE = '22023';
    END IF;
    DELETE FROM user_logins_default WHERE create_date < cutoff OR create_date IS NULL;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
