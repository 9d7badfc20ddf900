-- roles: erase
-- profile: full
-- forget's step that moves a user's vault entries aside
-- (user_logins_pii_vault_held, keyed by the erased user's key) while it
-- checks who else's rows use them (src/privacy/forget/lock.rs): the
-- entries of `ips` and `devices`, locked in the vault's lock order (kind,
-- token), then moved. Returns the entries moved. Owner's rights: the erase
-- role deletes entries only through this (and login_etl_put_back_vault),
-- never changes one in place.
CREATE OR REPLACE FUNCTION login_etl_hold_vault(user_key varchar, ips varchar[], devices varchar[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_held bigint;
BEGIN
    WITH mine AS (
        SELECT v.ctid AS at FROM user_logins_pii_vault v
        WHERE (v.kind = 'ip' AND v.token = ANY(ips)) OR (v.kind = 'device_id' AND v.token = ANY(devices))
        ORDER BY v.kind COLLATE "C", v.token COLLATE "C"
        FOR UPDATE),
    gone AS (
        DELETE FROM user_logins_pii_vault v USING mine WHERE v.ctid = mine.at
        RETURNING v.kind, v.token, v.key_id, v.nonce, v.ciphertext, v.created_at, v.key_version, v.aad_version, v.last_seen)
    INSERT INTO user_logins_pii_vault_held AS h (user_key, kind, token, key_id, nonce, ciphertext, created_at,
                                                 key_version, aad_version, last_seen)
    SELECT login_etl_hold_vault.user_key, gone.* FROM gone
    ON CONFLICT ON CONSTRAINT user_logins_pii_vault_held_pkey
        DO UPDATE SET last_seen = EXCLUDED.last_seen WHERE h.last_seen < EXCLUDED.last_seen;
    GET DIAGNOSTICS v_held = ROW_COUNT;
    RETURN v_held;
END
$$;
