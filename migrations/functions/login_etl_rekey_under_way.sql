-- roles: none
-- profile: full
-- Refuses (55000) unless a re-key from masking-key version `from_version`
-- to the next is under way. rotate-key's chunk functions re-token what
-- they are given: outside a rotation they would let the rotate role give
-- one person's token to another's row or vault entry. Called by the
-- owner's functions only.
CREATE OR REPLACE FUNCTION login_etl_rekey_under_way(from_version smallint)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_state record;
BEGIN
    SELECT coalesce(k.version, 1) AS version, k.rekey_from
        INTO v_state FROM (SELECT 1) AS one LEFT JOIN user_logins_key_state k ON true;
    IF v_state.rekey_from IS DISTINCT FROM from_version THEN
        RAISE EXCEPTION 'no re-key from masking-key version % is under way (the key is at version %, re-keying from %)',
            from_version, v_state.version, coalesce(v_state.rekey_from::text, 'none')
            USING ERRCODE = '55000',
                  HINT = 'login-etl rotate-key switches the key before it re-keys anything: run it, not these functions';
    END IF;
END
$$;
