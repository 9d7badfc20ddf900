-- roles: maintain
-- Deletes the DEFAULT partition's rows older than `cutoff` (past
-- retention: they get no partition). Returns how many. A cutoff inside
-- the owner's recorded retention is refused (login_etl_check_cutoff).
CREATE OR REPLACE FUNCTION login_etl_purge_default(cutoff date)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
BEGIN
    PERFORM login_etl_check_cutoff(cutoff);
    DELETE FROM user_logins_default WHERE create_date < cutoff OR create_date IS NULL;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
