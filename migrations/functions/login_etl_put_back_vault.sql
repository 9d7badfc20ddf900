-- roles: erase
-- profile: full
-- forget's step that puts back the held entries of `user_key` that other
-- users' rows still use (`ips`, `devices`: src/privacy/forget/mod.rs), in
-- the vault's lock order (kind, token), in one statement (see
-- login_etl_store_vault): the function may be storing the same entries at
-- the same moment. An entry stored again meanwhile keeps the later
-- `last_seen` of the two. Returns the entries put back.
CREATE OR REPLACE FUNCTION login_etl_put_back_vault(user_key varchar, ips varchar[], devices varchar[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_back bigint;
BEGIN
    WITH back AS (
        DELETE FROM user_logins_pii_vault_held h
        WHERE h.user_key = login_etl_put_back_vault.user_key
          AND ((h.kind = 'ip' AND h.token = ANY(ips)) OR (h.kind = 'device_id' AND h.token = ANY(devices)))
        RETURNING h.kind, h.token, h.key_id, h.nonce, h.ciphertext, h.created_at, h.key_version, h.aad_version, h.last_seen)
    INSERT INTO user_logins_pii_vault AS v (kind, token, key_id, nonce, ciphertext, created_at, key_version,
                                            aad_version, last_seen)
    SELECT * FROM back ORDER BY kind COLLATE "C", token COLLATE "C"
    ON CONFLICT ON CONSTRAINT user_logins_pii_vault_pkey
        DO UPDATE SET last_seen = EXCLUDED.last_seen WHERE v.last_seen < EXCLUDED.last_seen;
    GET DIAGNOSTICS v_back = ROW_COUNT;
    RETURN v_back;
END
$$;
