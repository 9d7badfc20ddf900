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
-- A row carries its user's tag (migrations/0026_user_tag.sql: 8 bytes of
-- the SHA-256 of the user key the function computed for it, at the row's
-- key version): a delete that reaches a row of `user_id` tagged for
-- another key is undone (LE015), so no erasure deletes a user it did not
-- list. The erase role cannot read the tag, holds no key to compute one,
-- and a tag read elsewhere names no key it could list. A row without a
-- tag (written before 0.3.0, by 0.2.0's function after a rollback, or
-- under user keys derived from the masking key, which a list from before
-- erasure keys keeps for good and so never tags) is deleted by user id
-- alone; a key rotation under the erasure key's own keys tags it.
CREATE OR REPLACE FUNCTION login_etl_forget_rows(user_id varchar, user_key varchar, lo date, hi date,
    null_dates boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_rows bigint;
    v_foreign bigint;
    v_tag bigint;
    v_uuid uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.user_key = login_etl_forget_rows.user_key
                   AND (e.begun_in IS NULL OR pg_xact_status(e.begun_in) IS DISTINCT FROM 'in progress')) THEN
        RAISE EXCEPTION USING ERRCODE = 'LE012',
            MESSAGE = 'this user key is not on the erasure list by a committed forget: list the user first (its forget_begun record commits with it)';
    END IF;
    -- The tag of the key (src/contract/row.rs, Token::tag): one-way, so a
    -- tag read from a row names no key an erasure could list.
    v_tag := ('x' || left(encode(sha256(convert_to(login_etl_forget_rows.user_key, 'UTF8')), 'hex'), 16))::bit(64)::bigint;
    -- The user's rows: every row the view user_logins shows under the id
    -- (coalesce(user_id_text, user_id::text)). The id is stored as uuid
    -- where it is one in canonical form, its text otherwise
    -- (src/contract/columns.rs), but whoever writes the table directly may
    -- spell a canonical id as text too: both spellings are deleted. In
    -- user_logins_rows itself by day of sent_at, so that only the segment's
    -- partitions are read (through the view, every one would be). No row
    -- of the narrow row is without a day: a segment of those has none.
    v_uuid := CASE WHEN translate(login_etl_forget_rows.user_id, '0123456789abcdef', '0000000000000000')
                        = '00000000-0000-0000-0000-000000000000'
                   THEN login_etl_forget_rows.user_id::uuid END;
    WITH gone AS (DELETE FROM user_logins_rows u
                    WHERE NOT null_dates
                      AND CASE WHEN v_uuid IS NULL THEN u.user_id_text = login_etl_forget_rows.user_id
                               ELSE (u.user_id = v_uuid AND u.user_id_text IS NULL)
                                    OR u.user_id_text = login_etl_forget_rows.user_id END
                      AND u.sent_at >= coalesce(lo, '-infinity'::date)::timestamp AT TIME ZONE 'UTC'
                      AND u.sent_at < coalesce(hi, 'infinity'::date)::timestamp AT TIME ZONE 'UTC'
                    RETURNING encode(u.masked_ip, 'hex') AS masked_ip,
                              encode(u.masked_device_id, 'hex') AS masked_device_id, u.user_tag),
         kept AS (INSERT INTO user_logins_erasure_tokens (user_key, kind, token)
                    SELECT login_etl_forget_rows.user_key, 'ip', masked_ip FROM gone WHERE masked_ip IS NOT NULL
                    UNION SELECT login_etl_forget_rows.user_key, 'device_id', masked_device_id FROM gone
                          WHERE masked_device_id IS NOT NULL
                    ON CONFLICT DO NOTHING)
    SELECT count(*), count(*) FILTER (WHERE gone.user_tag <> v_tag) INTO v_rows, v_foreign FROM gone;
    IF v_foreign > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'LE015',
            MESSAGE = format('%s rows of this user id are tagged for another user key, so nothing was deleted: '
                             'login-etl''s function and rotate-key tag each row with the user key this forget '
                             'checked against the database, so something else wrote or changed these rows (an '
                             'ingest credential writing rows itself, a rotate credential during a rotation, or the '
                             'tables'' owner): as the owner, the user''s own tag is '
                             '(''x'' || left(encode(sha256(convert_to(<the user_key of this run''s forget_begun record: login-etl audit>, ''UTF8'')), ''hex''), 16))::bit(64)::bigint; '
                             'delete only this user id''s rows whose user_tag is another, then erase again (docs/insiders.md)', v_foreign);
    END IF;
    RETURN v_rows;
END
$$;
