-- profile: full
-- The vault's entries age out with the rows that use them. Applied with
-- 0001 to 0009, idempotent.
--
-- Before this version an entry stayed for ever: when retention dropped
-- the last row that used a value, the original stayed in the vault, and
-- `login-etl forget`, which finds a user's values through their rows,
-- could no longer find it (the soak, seed 2: an erasure after the user's
-- rows had aged out left their values in the vault).
--
-- `last_seen` is the latest `create_date` of the rows written with the
-- entry: the function moves it forward (at most once per entry and day,
-- through login_etl_store_vault: only the entries that are behind, so no
-- write locks the others), and `login-etl maintain` deletes the entries
-- whose `last_seen` is past retention (login_etl_purge_vault). Entries from before this version get
-- the day of the migration: kept at most one retention period longer than
-- their rows, never shorter. `current_date` is not volatile, so the column
-- comes without rewriting the table (it is evaluated once).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['user_logins_pii_vault', 'user_logins_pii_vault_held'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(t)
                       AND attname = 'last_seen' AND NOT attisdropped) THEN
            EXECUTE format('ALTER TABLE %I ADD COLUMN last_seen date NOT NULL DEFAULT current_date', t);
        END IF;
    END LOOP;
END
$$;
