-- roles: rotate
-- profile: full
-- Writes what rotate-key computed for the records login_etl_audit_to_rekey
-- listed; only during a re-key to `to_version` (login_etl_rekey_under_way);
-- what each replaced kept in user_logins_rekeyed (append-only).
CREATE OR REPLACE FUNCTION login_etl_rekey_audit_chunk(ids bigint[], tokens text[], user_keys text[], to_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_moved bigint;
BEGIN
    PERFORM login_etl_rekey_under_way((to_version - 1)::smallint);
    -- One value per record: an id twice would record a value never written.
    IF cardinality(ids) <> (SELECT count(DISTINCT i) FROM unnest(ids) AS i) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'a re-key chunk of the audit trail names a record twice: nothing was changed';
    END IF;
    -- Each record's old token and user key kept beside the new ones
    -- (user_logins_rekeyed): read under the row's lock, then changed.
    WITH old AS (
        SELECT a.id, a.token AS old_token, a.user_key AS old_key, m.token, m.user_key
            FROM user_logins_pii_audit a JOIN unnest(ids, tokens, user_keys) AS m(id, token, user_key) ON a.id = m.id
            WHERE coalesce(a.key_version, 0) < to_version
            FOR UPDATE OF a
    ), moved AS (
        UPDATE user_logins_pii_audit a SET token = old.token, user_key = old.user_key, key_version = to_version
            FROM old WHERE a.id = old.id
            RETURNING a.id
    )
    INSERT INTO user_logins_rekeyed (source, source_id, to_version, old_user_key, new_user_key, old_token, new_token)
        SELECT 'audit', old.id, to_version, old.old_key, old.user_key, old.old_token, old.token
            FROM old JOIN moved ON moved.id = old.id;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    RETURN v_moved;
END
$$;
