-- roles: erase
-- profile: full
-- `login-etl forget`'s second step, one segment of the table at a time
-- (`lo` to `hi`, either open; or the rows without a date): deletes
-- `user_id`'s rows and keeps their tokens for the vault's step
-- (user_logins_erasure_tokens); returns how many. Refused (LE012) unless
-- `user_key` is on the erasure list by a committed transaction (the one
-- that wrote its forget_begun record): a delete never comes before its
-- record is durable. The erase role holds no DELETE of its own.
--
-- A row carries its user's tag (migrations/0026_user_tag.sql: the first 8
-- bytes of the user key the function computed for it, at the row's key
-- version): a delete that reaches a row of `user_id` tagged for another
-- key is undone (LE015), so no erasure deletes a user it did not list.
-- The erase role cannot read the tag, and holds no key to compute one. A
-- row without a tag (written before 0.3.0, or while the database was
-- masking-only) is deleted by user id alone; rotate-key tags it.
CREATE OR REPLACE FUNCTION login_etl_forget_rows(user_id varchar, user_key varchar, lo date, hi date,
    null_dates boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_rows bigint;
    v_foreign bigint;
    v_tag bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.user_key = login_etl_forget_rows.user_key
                   AND (e.begun_in IS NULL OR pg_xact_status(e.begun_in) IS DISTINCT FROM 'in progress')) THEN
        RAISE EXCEPTION USING ERRCODE = 'LE012',
            MESSAGE = 'this user key is not on the erasure list by a committed forget: list the user first (its forget_begun record commits with it)';
    END IF;
    -- Listed keys are 64 hex digits (user_logins_erased_key_only).
    v_tag := ('x' || left(login_etl_forget_rows.user_key, 16))::bit(64)::bigint;
    IF null_dates THEN
        WITH gone AS (DELETE FROM user_logins u WHERE u.user_id = login_etl_forget_rows.user_id
                        AND u.create_date IS NULL RETURNING u.masked_ip, u.masked_device_id, u.user_tag),
             kept AS (INSERT INTO user_logins_erasure_tokens (user_key, kind, token)
                        SELECT login_etl_forget_rows.user_key, 'ip', masked_ip FROM gone WHERE masked_ip IS NOT NULL
                        UNION SELECT login_etl_forget_rows.user_key, 'device_id', masked_device_id FROM gone
                              WHERE masked_device_id IS NOT NULL
                        ON CONFLICT DO NOTHING)
        SELECT count(*), count(*) FILTER (WHERE gone.user_tag <> v_tag) INTO v_rows, v_foreign FROM gone;
    ELSE
        WITH gone AS (DELETE FROM user_logins u WHERE u.user_id = login_etl_forget_rows.user_id
                        AND u.create_date >= coalesce(lo, '-infinity'::date)
                        AND u.create_date < coalesce(hi, 'infinity'::date)
                        RETURNING u.masked_ip, u.masked_device_id, u.user_tag),
             kept AS (INSERT INTO user_logins_erasure_tokens (user_key, kind, token)
                        SELECT login_etl_forget_rows.user_key, 'ip', masked_ip FROM gone WHERE masked_ip IS NOT NULL
                        UNION SELECT login_etl_forget_rows.user_key, 'device_id', masked_device_id FROM gone
                              WHERE masked_device_id IS NOT NULL
                        ON CONFLICT DO NOTHING)
        SELECT count(*), count(*) FILTER (WHERE gone.user_tag <> v_tag) INTO v_rows, v_foreign FROM gone;
    END IF;
    IF v_foreign > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'LE015',
            MESSAGE = format('%s rows of this user id are tagged for another user key, so nothing was deleted: '
                             'the function tags each row with the key this forget checked against the database, '
                             'so these rows were written or altered by something else: find what with login-etl doctor '
                             'and the database log before erasing again (docs/insiders.md)', v_foreign);
    END IF;
    RETURN v_rows;
END
$$;
