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
    DELETE FROM user_logins_default WHERE sent_at < cutoff::timestamp AT TIME ZONE 'UTC';
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
