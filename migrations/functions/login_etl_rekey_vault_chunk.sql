-- roles: rotate
-- profile: full
-- rotate-key's chunk of the vault (src/privacy/rekey/vault.rs): each entry
-- still under `from_version` moves to `from_version + 1` with the token the
-- caller computed. Deleted and inserted again rather than updated: a
-- function on the new version may store the same value's new entry (its
-- twin) at any moment, and INSERT ... ON CONFLICT waits for such a twin
-- and keeps it, where an UPDATE to the twin's key fails (23505); the twin
-- keeps the later `last_seen` of the two (the rows re-keyed to its token
-- include the old entry's). The ciphertext moves unchanged: since
-- associated-data form 2 it is bound to its kind and nonce, not to the
-- token. Run as the owner, so the rotate role needs no privilege on the
-- vault's ciphertexts. Returns the entries moved (merged into a twin or
-- not), also added to the re-key's count.
--
-- Only during a re-key from `from_version` (login_etl_rekey_under_way).
-- The moved entries go in in (kind, token) order, the vault's lock order
-- (login_etl_store_vault): the function may be storing the same twins or
-- moving them forward at the same moment.
--
-- No nested loop (enable_nestloop off): the entries still at
-- `from_version` are not analyzed again after a rotation, and a plan that
-- trusts the statistics of before it (a rotation right after another)
-- takes them for almost none and re-scans the chunk's list for each, for
-- minutes per chunk. Hashed, the chunk's own pages (its TID range) are read
-- once, whatever the statistics say.
CREATE OR REPLACE FUNCTION login_etl_rekey_vault_chunk(tids tid[], kinds text[], new_tokens text[], from_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET enable_nestloop = off AS $$
DECLARE
    v_moved bigint;
    v_first tid;
    v_last tid;
BEGIN
    PERFORM login_etl_rekey_under_way(from_version);
    SELECT min(t), max(t) INTO v_first, v_last FROM unnest(tids) AS t;
    WITH m AS (SELECT * FROM unnest(tids, kinds, new_tokens) AS m(t, kind, token)),
    gone AS (
        DELETE FROM user_logins_pii_vault v USING m
        WHERE v.ctid = m.t AND v.ctid >= v_first AND v.ctid <= v_last
          AND v.kind = m.kind AND v.key_version = from_version
        RETURNING v.kind, m.token, v.key_id, v.nonce, v.ciphertext, v.created_at, v.aad_version, v.last_seen),
    moved AS (
        INSERT INTO user_logins_pii_vault AS v (kind, token, key_id, nonce, ciphertext, created_at, key_version, aad_version, last_seen)
        SELECT kind, token, key_id, nonce, ciphertext, created_at, from_version + 1, aad_version, last_seen FROM gone
        ORDER BY kind COLLATE "C", token COLLATE "C"
        ON CONFLICT (kind, token) DO UPDATE SET last_seen = EXCLUDED.last_seen WHERE v.last_seen < EXCLUDED.last_seen)
    SELECT count(*) INTO v_moved FROM gone;
    UPDATE user_logins_key_state SET rekey_vault = rekey_vault + v_moved;
    RETURN v_moved;
END
$$;
