-- roles: ingest
-- profile: full
-- The vault entries of one write transaction's rows and the data key they
-- are sealed under (src/ingest/sink/tx.rs), sent after the rows and
-- before the COMMIT: a row never commits without its entries. Owner's
-- rights: the ingest role holds no privilege on the vault, so a stolen
-- credential can add an entry for a token nobody stored yet and nothing
-- more: it cannot read an entry, change one, lock one, or move the day an
-- entry is kept to (`last_seen`) back or past today.
--
-- An entry stored already is kept as it is; its `last_seen` moves forward
-- to the latest day of the rows that use it, no further than today (UTC),
-- so at most once per entry and day. In one statement, in (kind, token)
-- order: every transaction that locks vault entries (this one, rotate-key's
-- chunk, forget's put-back) locks them in that order, in one statement, so
-- none waits for another in a circle (a deadlock). Only the entries that
-- are new or behind are locked: an entry the batch shares with other
-- writers and that is current takes no lock, in any batch.
--
-- Against maintain's purge (login_etl_purge_vault, which skips an entry it
-- finds locked): an entry moved forward here is locked until the COMMIT,
-- and one the purge deleted first is stored again. An entry another
-- transaction is storing (a batch with an older row, a chunk, a put-back)
-- is waited for, then moved forward.
CREATE OR REPLACE FUNCTION login_etl_store_vault(key_id varchar, kms_key_id varchar, wrapped_key bytea,
    kinds varchar[], tokens varchar[], nonces bytea[], ciphertexts bytea[], days date[],
    key_version smallint, aad_version smallint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_version smallint := coalesce((SELECT k.version FROM user_logins_key_state k), 1);
BEGIN
    -- The write check (login_etl_check_write) ran in this transaction
    -- already; these refuse what only a hand-made call would send.
    IF login_etl_store_vault.key_version IS DISTINCT FROM v_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, the entries were masked at version %s: reload the key and re-key the batch', v_version, login_etl_store_vault.key_version);
    END IF;
    IF login_etl_store_vault.aad_version IS DISTINCT FROM 2::smallint THEN
        RAISE EXCEPTION 'vault entries are sealed with associated-data form 2, not %', login_etl_store_vault.aad_version
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO user_logins_vault_keys (key_id, kms_key_id, wrapped_key)
        VALUES (login_etl_store_vault.key_id, login_etl_store_vault.kms_key_id, login_etl_store_vault.wrapped_key)
        ON CONFLICT ON CONSTRAINT user_logins_vault_keys_pkey DO NOTHING;
    INSERT INTO user_logins_pii_vault AS v (kind, token, key_id, nonce, ciphertext, key_version, aad_version, last_seen)
    SELECT DISTINCT ON (m.k COLLATE "C", m.t COLLATE "C")
           m.k, m.t, login_etl_store_vault.key_id, m.n, m.c, v_version, 2, least(m.d, v_today)
    FROM unnest(kinds, tokens, nonces, ciphertexts, days) AS m(k, t, n, c, d)
    WHERE NOT EXISTS (SELECT 1 FROM user_logins_pii_vault e
                      WHERE e.kind = m.k AND e.token = m.t AND e.last_seen >= least(m.d, v_today))
    ORDER BY m.k COLLATE "C", m.t COLLATE "C", m.d DESC
    ON CONFLICT ON CONSTRAINT user_logins_pii_vault_pkey
        DO UPDATE SET last_seen = EXCLUDED.last_seen WHERE v.last_seen < EXCLUDED.last_seen;
END
$$;
