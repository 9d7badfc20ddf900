-- The vault's entries age out with the rows that use them; and the write
-- check in one function. Applied with 0001 to 0007, idempotent.
--
-- Before this version an entry stayed for ever: when retention dropped
-- the last row that used a value, the original stayed in the vault, and
-- `login-etl forget`, which finds a user's values through their rows,
-- could no longer find it (the soak, seed 2: an erasure after the user's
-- rows had aged out left their values in the vault).
--
-- `last_seen` is the latest `create_date` of the rows written with the
-- entry: the function moves it forward (at most once per entry and day,
-- an UPDATE of the entries that are behind, so no write locks the others),
-- and `login-etl maintain` deletes the entries whose `last_seen` is past
-- retention (login_etl_purge_vault). Entries from before this version get
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

-- rotate-key's chunk of the vault (0007) carries `last_seen` to the moved
-- entry; where the new version's twin is there already, the twin keeps the
-- later of the two days (the rows re-keyed to its token include the old
-- entry's).
CREATE OR REPLACE FUNCTION login_etl_rekey_vault_chunk(tids tid[], kinds text[], new_tokens text[], from_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET enable_nestloop = off AS $$
DECLARE
    v_moved bigint;
    v_first tid;
    v_last tid;
BEGIN
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
        ON CONFLICT (kind, token) DO UPDATE SET last_seen = EXCLUDED.last_seen WHERE v.last_seen < EXCLUDED.last_seen)
    SELECT count(*) INTO v_moved FROM gone;
    UPDATE user_logins_key_state SET rekey_vault = rekey_vault + v_moved;
    RETURN v_moved;
END
$$;

-- `login-etl maintain`'s retention of the vault: deletes, in pages
-- [from_page, from_page + pages) of the vault, the entries no row within
-- retention has used (`last_seen` before `cutoff`). Returns the entries
-- deleted and the next page; past the last page, no next page. A chunk of
-- pages at a time, each in its own transaction: never a long scan under a
-- lock. A function writing a row with one of these values meanwhile either
-- moved `last_seen` first (the DELETE then skips the entry) or finds the
-- entry gone and stores it again.
CREATE OR REPLACE FUNCTION login_etl_purge_vault(cutoff date, from_page bigint, pages integer,
    OUT purged bigint, OUT next_page bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
BEGIN
    IF cutoff > (now() AT TIME ZONE 'UTC')::date THEN
        RAISE EXCEPTION 'a retention cutoff after today (%) would delete entries of current rows', cutoff
            USING ERRCODE = '22023';
    END IF;
    purged := 0;
    IF from_page >= pg_relation_size('user_logins_pii_vault') / current_setting('block_size')::int8 THEN
        RETURN;
    END IF;
    DELETE FROM user_logins_pii_vault
        WHERE ctid >= format('(%s,0)', from_page)::tid AND ctid < format('(%s,0)', from_page + pages)::tid
          AND last_seen < cutoff;
    GET DIAGNOSTICS purged = ROW_COUNT;
    next_page := from_page + pages;
END
$$;

REVOKE ALL ON FUNCTION login_etl_purge_vault(date, bigint, integer) FROM PUBLIC;

-- The write check of 0007 (login_etl_refuse_erased with three arguments:
-- the key version, the erasure list's version, the version the batch's
-- users were looked up from), the same codes and messages, in one
-- function that reads the key state once: 0007's calls
-- login_etl_key_state(), a SQL function planned again at each call, twice
-- per write, which made the check a fifth of a batch of 10's time above
-- its floor (docs/performance.md). Owner's rights (it reads the key state
-- and the erasure list's versions, and says nothing but whether the write
-- may go), so only the roles granted it may run it.
CREATE OR REPLACE FUNCTION login_etl_check_write(known bigint, key_version integer, checked_from integer)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
DECLARE
    v_state record;
BEGIN
    SELECT coalesce(k.version, 1) AS version, k.rekey_from,
           coalesce((SELECT max(e.seq) FROM user_logins_erased e), 0) AS listed
        INTO v_state FROM (SELECT 1) AS one LEFT JOIN user_logins_key_state k ON true;
    IF v_state.version <> key_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, the batch was masked at version %s: reload the key and re-key the batch', v_state.version, key_version);
    END IF;
    IF v_state.listed <> known THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the erasure list changed (login-etl forget): reload it and filter the batch again';
    END IF;
    IF v_state.rekey_from IS NOT NULL AND checked_from > v_state.rekey_from
       AND EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.key_version < checked_from) THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = format('rotate-key is moving the erasure list from key version %s and this write checked users at version %s only: reload the list (a function from before this check: deploy the current version)', v_state.rekey_from, checked_from);
    END IF;
END
$$;

REVOKE ALL ON FUNCTION login_etl_check_write(bigint, integer, integer) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION login_etl_rekey_vault_chunk(tid[], text[], text[], smallint) SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION login_etl_purge_vault(date, bigint, integer) SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION login_etl_check_write(bigint, integer, integer) SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
END
$$;

-- Roles granted before this version: what `login-etl grants` gives now.
-- The function moves `last_seen` (ingest roles: INSERT on the vault, no
-- DELETE) and checks its writes with login_etl_check_write; forget moves
-- `last_seen` aside and back with the entry (erase roles); maintain purges
-- (its roles can run login_etl_ensure_partition).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT grantee FROM information_schema.column_privileges
        WHERE table_schema = current_schema() AND table_name = 'user_logins_pii_vault'
          AND column_name = 'ciphertext' AND privilege_type = 'INSERT'
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT SELECT (last_seen), INSERT (last_seen), UPDATE (last_seen) ON user_logins_pii_vault TO %I', r.grantee);
        IF has_table_privilege(r.grantee, 'user_logins_pii_vault', 'DELETE') THEN
            EXECUTE format('GRANT SELECT (last_seen), INSERT (last_seen), UPDATE (last_seen) ON user_logins_pii_vault_held TO %I', r.grantee);
        END IF;
    END LOOP;
    -- Ingest roles: those granted the check of 0007.
    FOR r IN
        SELECT DISTINCT grantee FROM information_schema.role_routine_grants
        WHERE routine_schema = current_schema() AND routine_name = 'login_etl_refuse_erased'
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_check_write(bigint, integer, integer) TO %I', r.grantee);
    END LOOP;
    FOR r IN
        SELECT DISTINCT grantee FROM information_schema.role_routine_grants
        WHERE routine_schema = current_schema() AND routine_name = 'login_etl_ensure_partition'
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_purge_vault(date, bigint, integer) TO %I', r.grantee);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 8 $$;
