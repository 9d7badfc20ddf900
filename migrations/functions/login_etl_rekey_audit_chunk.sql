-- roles: rotate
-- profile: full
-- Writes what rotate-key computed for the records login_etl_audit_to_rekey
-- listed; only during a re-key to `to_version` (login_etl_rekey_under_way).
CREATE OR REPLACE FUNCTION login_etl_rekey_audit_chunk(ids bigint[], tokens text[], user_keys text[], to_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_moved bigint;
BEGIN
    PERFORM login_etl_rekey_under_way((to_version - 1)::smallint);
    UPDATE user_logins_pii_audit a SET token = m.token, user_key = m.user_key, key_version = to_version
        FROM unnest(ids, tokens, user_keys) AS m(id, token, user_key)
        WHERE a.id = m.id AND coalesce(a.key_version, 0) < to_version;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    RETURN v_moved;
END
$$;
