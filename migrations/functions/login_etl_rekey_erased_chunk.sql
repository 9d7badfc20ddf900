-- roles: rotate
-- profile: full
-- rotate-key's chunk of the erasure list, after the switch: the user keys
-- of `from_version` the caller read move to the next version's, which it
-- computed; in place (seq and erased_at kept, which the trigger checks),
-- each old key kept in user_logins_rekeyed (append-only).
-- Meanwhile writers check a user at both versions (the list's rekey_from),
-- and forget lists a user at the new version only when the old entry is
-- not there (src/privacy/forget/), so the new key never exists twice.
-- Only during a re-key from `from_version` (login_etl_rekey_under_way).
CREATE OR REPLACE FUNCTION login_etl_rekey_erased_chunk(old_keys text[], new_keys text[], from_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_moved bigint;
BEGIN
    PERFORM login_etl_rekey_under_way(from_version);
    -- Each key moved is recorded with the one it replaced (user_logins_rekeyed).
    WITH moved AS (
        UPDATE user_logins_erased e SET user_key = m.new_key, key_version = from_version + 1
            FROM unnest(old_keys, new_keys) AS m(old_key, new_key)
            WHERE e.user_key = m.old_key AND e.key_version = from_version
            RETURNING e.seq, m.old_key, m.new_key
    )
    INSERT INTO user_logins_rekeyed (source, source_id, to_version, old_user_key, new_user_key)
        SELECT 'erased', moved.seq, from_version + 1, moved.old_key, moved.new_key FROM moved;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    RETURN v_moved;
END
$$;
