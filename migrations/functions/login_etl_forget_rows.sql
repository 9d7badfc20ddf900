-- roles: erase
-- profile: full
-- `login-etl forget`'s second step, one segment of the table at a time
-- (`lo` to `hi`, either open; or the rows without a date): deletes
-- `user_id`'s rows and keeps their tokens for the vault's step
-- (user_logins_erasure_tokens); returns how many. Refused (LE012) unless
-- `user_key` is on the erasure list by a committed transaction (the one
-- that wrote its forget_begun record): a delete never comes before its
-- record is durable. The erase role holds no DELETE of its own.
CREATE OR REPLACE FUNCTION login_etl_forget_rows(user_id varchar, user_key varchar, lo date, hi date,
    null_dates boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_rows bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.user_key = login_etl_forget_rows.user_key
                   AND (e.begun_in IS NULL OR pg_xact_status(e.begun_in) IS DISTINCT FROM 'in progress')) THEN
        RAISE EXCEPTION USING ERRCODE = 'LE012',
            MESSAGE = 'this user key is not on the erasure list by a committed forget: list the user first (its forget_begun record commits with it)';
    END IF;
    IF null_dates THEN
        WITH gone AS (DELETE FROM user_logins u WHERE u.user_id = login_etl_forget_rows.user_id
                        AND u.create_date IS NULL RETURNING u.masked_ip, u.masked_device_id),
             kept AS (INSERT INTO user_logins_erasure_tokens (user_key, kind, token)
                        SELECT login_etl_forget_rows.user_key, 'ip', masked_ip FROM gone WHERE masked_ip IS NOT NULL
                        UNION SELECT login_etl_forget_rows.user_key, 'device_id', masked_device_id FROM gone
                              WHERE masked_device_id IS NOT NULL
                        ON CONFLICT DO NOTHING)
        SELECT count(*) INTO v_rows FROM gone;
    ELSE
        WITH gone AS (DELETE FROM user_logins u WHERE u.user_id = login_etl_forget_rows.user_id
                        AND u.create_date >= coalesce(lo, '-infinity'::date)
                        AND u.create_date < coalesce(hi, 'infinity'::date)
                        RETURNING u.masked_ip, u.masked_device_id),
             kept AS (INSERT INTO user_logins_erasure_tokens (user_key, kind, token)
                        SELECT login_etl_forget_rows.user_key, 'ip', masked_ip FROM gone WHERE masked_ip IS NOT NULL
                        UNION SELECT login_etl_forget_rows.user_key, 'device_id', masked_device_id FROM gone
                              WHERE masked_device_id IS NOT NULL
                        ON CONFLICT DO NOTHING)
        SELECT count(*) INTO v_rows FROM gone;
    END IF;
    RETURN v_rows;
END
$$;
