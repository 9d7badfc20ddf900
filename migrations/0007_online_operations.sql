-- What lets rotate-key, maintain and forget run beside live ingest without
-- holding a write up (the soak, tests/soak/, found each of these). Applied
-- with 0001 to 0006, idempotent.

-- rotate-key's chunk of the vault (src/rekey.rs): each entry still under
-- `from_version` moves to `from_version + 1` with the token the caller
-- computed. Deleted and inserted again rather than updated: a function on
-- the new version may store the same value's new entry (its twin) at any
-- moment, and INSERT ... ON CONFLICT DO NOTHING waits for such a twin and
-- keeps it, where an UPDATE to the twin's key fails (23505). The
-- ciphertext moves unchanged: since associated-data form 2 it is bound to
-- its kind and nonce, not to the token. Run as the owner, so the rotate
-- role needs no privilege on the vault's ciphertexts. Returns the entries
-- moved (merged into a twin or not), also added to the re-key's count.
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
    SELECT min(t), max(t) INTO v_first, v_last FROM unnest(tids) AS t;
    WITH m AS (SELECT * FROM unnest(tids, kinds, new_tokens) AS m(t, kind, token)),
    gone AS (
        DELETE FROM user_logins_pii_vault v USING m
        WHERE v.ctid = m.t AND v.ctid >= v_first AND v.ctid <= v_last
          AND v.kind = m.kind AND v.key_version = from_version
        RETURNING v.kind, m.token, v.key_id, v.nonce, v.ciphertext, v.created_at, v.aad_version),
    moved AS (
        INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, created_at, key_version, aad_version)
        SELECT kind, token, key_id, nonce, ciphertext, created_at, from_version + 1, aad_version FROM gone
        ON CONFLICT (kind, token) DO NOTHING)
    SELECT count(*) INTO v_moved FROM gone;
    UPDATE user_logins_key_state SET rekey_vault = rekey_vault + v_moved;
    RETURN v_moved;
END
$$;

-- The switch (login_etl_switch_key, 0006) refuses while the vault holds
-- entries of the old form, with a probe of this index instead of a scan
-- of the vault under its lock. On an empty vault it is made here, in a
-- moment; on one with entries, `login-etl migrate` builds it online
-- (CONCURRENTLY, which a transaction cannot run: src/schema/mod.rs).
DO $$
BEGIN
    IF to_regclass('user_logins_pii_vault_form1') IS NULL
       AND NOT EXISTS (SELECT 1 FROM user_logins_pii_vault) THEN
        CREATE INDEX user_logins_pii_vault_form1 ON user_logins_pii_vault (kind) WHERE aad_version = 1;
    END IF;
END
$$;

-- rotate-key's chunk of the erasure list, after the switch: the user keys
-- of `from_version` the caller read move to the next version's, which it
-- computed; in place (seq and erased_at kept, which the trigger checks).
-- Meanwhile writers check a user at both versions (the list's rekey_from),
-- and forget lists a user at the new version only when the old entry is
-- not there (src/reveal.rs), so the new key never exists twice.
CREATE OR REPLACE FUNCTION login_etl_rekey_erased_chunk(old_keys text[], new_keys text[], from_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_moved bigint;
BEGIN
    UPDATE user_logins_erased e SET user_key = m.new_key, key_version = from_version + 1
        FROM unnest(old_keys, new_keys) AS m(old_key, new_key)
        WHERE e.user_key = m.old_key AND e.key_version = from_version;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    RETURN v_moved;
END
$$;

-- The write check of this release: login_etl_refuse_erased(known,
-- key_version) (0006), and LE001 while the erasure list still holds keys
-- older than `checked_from`, the oldest version the writer looked its
-- users up at. A writer of this release reads the list's rekey_from and
-- checks from there; one of the release before checks its own version
-- only (the two-argument form below), so while rotate-key moves the list
-- after a switch it would miss the users not moved yet: it is refused
-- (it knows LE001: it reloads and tries again, then backs the batch off,
-- never to the DLQ) until the list is moved, seconds after the switch.
CREATE OR REPLACE FUNCTION login_etl_refuse_erased(known bigint, key_version integer, checked_from integer)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_from smallint := (SELECT s.rekey_from FROM login_etl_key_state() s);
BEGIN
    PERFORM login_etl_refuse_erased_at(known, key_version);
    IF v_from IS NOT NULL AND checked_from > v_from
       AND login_etl_erased_below(checked_from::smallint) THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = format('rotate-key is moving the erasure list from key version %s and this write checked users at version %s only: reload the list (a function from before this check: deploy the current version)', v_from, checked_from);
    END IF;
END
$$;

-- Whether the erasure list holds a key older than `v` (the writer's role
-- reads user_key and seq only; this tells nothing else).
CREATE OR REPLACE FUNCTION login_etl_erased_below(v smallint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.key_version < v)
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION login_etl_erased_below(smallint) SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
END
$$;

-- 0006's check, under a name of its own (the two-argument name is the
-- previous release's entry point now).
CREATE OR REPLACE FUNCTION login_etl_refuse_erased_at(known bigint, key_version integer) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    current_version smallint := (SELECT s.version FROM login_etl_key_state() s);
BEGIN
    IF coalesce(current_version, 1) <> key_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, the batch was masked at version %s: reload the key and re-key the batch', coalesce(current_version, 1), key_version);
    END IF;
    IF coalesce((SELECT max(seq) FROM user_logins_erased), 0) <> known THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the erasure list changed (login-etl forget): reload it and filter the batch again';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION login_etl_refuse_erased(known bigint, key_version integer) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM login_etl_refuse_erased(known, key_version, key_version);
END
$$;

-- The audit trail keeps tokens (reveal) and user keys (forget): they are
-- re-keyed with everything else, so that no stored token can be computed
-- with a retired key alone. Each record names its version; records from
-- before this column have none, and their version is the one of their
-- time (1 + the re-keys begun before them).
CREATE OR REPLACE FUNCTION login_etl_current_key_version() RETURNS smallint
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT coalesce((SELECT version FROM user_logins_key_state), 1::smallint)
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'user_logins_pii_audit'::regclass
                   AND attname = 'key_version' AND NOT attisdropped) THEN
        ALTER TABLE user_logins_pii_audit ADD COLUMN key_version smallint;
    END IF;
    IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'user_logins_pii_audit'::regclass AND a.attname = 'key_version')
       IS DISTINCT FROM 'login_etl_current_key_version()' THEN
        ALTER TABLE user_logins_pii_audit ALTER COLUMN key_version SET DEFAULT login_etl_current_key_version();
    END IF;
END
$$;

-- Append-only still: an UPDATE gets through only when it changes nothing
-- but the token, the user key and a version that grows (the re-key's).
CREATE OR REPLACE FUNCTION login_etl_audit_rekey_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = OLD.id AND NEW.at = OLD.at AND NEW.action = OLD.action AND NEW.caller_arn = OLD.caller_arn
       AND NEW.kind IS NOT DISTINCT FROM OLD.kind AND NEW.data_key_id IS NOT DISTINCT FROM OLD.data_key_id
       AND NEW.rows_deleted IS NOT DISTINCT FROM OLD.rows_deleted
       AND NEW.vault_entries_deleted IS NOT DISTINCT FROM OLD.vault_entries_deleted
       AND NEW.detail IS NOT DISTINCT FROM OLD.detail
       AND NEW.key_version > coalesce(OLD.key_version, 0) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only (a re-key may only move a token or user key to a newer version)', TG_TABLE_NAME;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_pii_audit_append_only'
               AND tgrelid = to_regclass('user_logins_pii_audit')) THEN
        DROP TRIGGER user_logins_pii_audit_append_only ON user_logins_pii_audit;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_pii_audit_rekey_only'
                   AND tgrelid = to_regclass('user_logins_pii_audit')) THEN
        CREATE TRIGGER user_logins_pii_audit_rekey_only
            BEFORE UPDATE ON user_logins_pii_audit
            FOR EACH ROW EXECUTE FUNCTION login_etl_audit_rekey_only();
        CREATE TRIGGER user_logins_pii_audit_no_delete
            BEFORE DELETE OR TRUNCATE ON user_logins_pii_audit
            FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only();
    END IF;
END
$$;

-- The records rotate-key still has to re-key to `to_version`, in id order
-- after `after_id`: their token, user key and version (of their time, when
-- they name none).
CREATE OR REPLACE FUNCTION login_etl_audit_to_rekey(to_version smallint, after_id bigint, max_rows integer)
RETURNS TABLE(id bigint, token text, user_key text, key_version smallint)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    WITH begun AS (SELECT coalesce(array_agg(b.id), '{}') AS ids
                   FROM user_logins_pii_audit b WHERE b.action = 'rekey_begun')
    SELECT a.id, a.token::text, a.user_key::text,
           coalesce(a.key_version, (1 + (SELECT count(*) FROM unnest((SELECT ids FROM begun)) i WHERE i < a.id)))::smallint
    FROM user_logins_pii_audit a
    WHERE a.id > after_id AND (a.token IS NOT NULL OR a.user_key IS NOT NULL)
      AND (a.key_version IS NULL OR a.key_version < to_version)
    ORDER BY a.id LIMIT max_rows
$$;

-- Writes what rotate-key computed for those records.
CREATE OR REPLACE FUNCTION login_etl_rekey_audit_chunk(ids bigint[], tokens text[], user_keys text[], to_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_moved bigint;
BEGIN
    UPDATE user_logins_pii_audit a SET token = m.token, user_key = m.user_key, key_version = to_version
        FROM unnest(ids, tokens, user_keys) AS m(id, token, user_key)
        WHERE a.id = m.id AND coalesce(a.key_version, 0) < to_version;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    RETURN v_moved;
END
$$;

REVOKE ALL ON FUNCTION login_etl_rekey_vault_chunk(tid[], text[], text[], smallint) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_rekey_erased_chunk(text[], text[], smallint) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_audit_to_rekey(smallint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_rekey_audit_chunk(bigint[], text[], text[], smallint) FROM PUBLIC;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['login_etl_rekey_vault_chunk(tid[], text[], text[], smallint)',
                             'login_etl_rekey_erased_chunk(text[], text[], smallint)',
                             'login_etl_current_key_version()',
                             'login_etl_audit_to_rekey(smallint, bigint, integer)',
                             'login_etl_rekey_audit_chunk(bigint[], text[], text[], smallint)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_catalog, pg_temp', f, current_schema());
    END LOOP;
END
$$;

-- Rotate roles granted before this version: the functions above, and the
-- partition of each row (tableoid: a chunk re-keys the rows of one table).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT grantee FROM information_schema.role_routine_grants
        WHERE routine_schema = current_schema() AND routine_name = 'login_etl_begin_rekey'
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_switch_key(smallint, text, text, text) TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_rekey_vault_chunk(tid[], text[], text[], smallint) TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_rekey_erased_chunk(text[], text[], smallint) TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_audit_to_rekey(smallint, bigint, integer) TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_rekey_audit_chunk(bigint[], text[], text[], smallint) TO %I', r.grantee);
        EXECUTE format('GRANT SELECT (tableoid) ON user_logins TO %I', r.grantee);
    END LOOP;
END
$$;

-- Reveal roles granted before this version: each audit record names the
-- version of the token it reveals, read with the row or the vault entry.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT grantee FROM information_schema.column_privileges
        WHERE table_schema = current_schema() AND privilege_type = 'INSERT'
          AND table_name = 'user_logins_pii_audit' AND column_name = 'token'
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT INSERT (key_version) ON user_logins_pii_audit TO %I', r.grantee);
        EXECUTE format('GRANT SELECT (key_version) ON user_logins_pii_vault TO %I', r.grantee);
        EXECUTE format('GRANT SELECT (key_version) ON user_logins TO %I', r.grantee);
    END LOOP;
END
$$;

-- The DEFAULT partition, when it holds more than maintain may move under
-- its lock (a day of rows, after days of failed maintenance), is swapped
-- out instead of emptied: in one moment of catalog work (its lock waited
-- for at most 100 ms, like retention's detach) it is detached and renamed
-- user_logins_drain, an empty DEFAULT partition takes its place and the
-- days writes go to now get their partitions. Writes go on at once;
-- maintain then makes the partitions of the drained days (the new DEFAULT
-- holds next to nothing: no long scan, no write waiting). The drained
-- rows then go back through user_logins in short chunks
-- (login_etl_drain_default), ON CONFLICT DO NOTHING keeping a message that
-- was delivered again meanwhile once. Until then they are out of sight:
-- forget exits 75 and says to run it again (its generation check below),
-- and rotate-key's switch waits. Refused while a re-key is under way
-- (LE007): its walk would not see them.
CREATE TABLE IF NOT EXISTS user_logins_default_drains(
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    rows_estimate bigint,
    finished_at   timestamptz
);

-- Whether a drain is under way, and how many began: what forget compares
-- before and after its deletes. Needs no privilege (owner's, fixed path).
CREATE OR REPLACE FUNCTION login_etl_drain_state(OUT draining boolean, OUT generation bigint)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT to_regclass('user_logins_drain') IS NOT NULL,
           coalesce((SELECT max(id) FROM user_logins_default_drains), 0)
$$;

-- The DEFAULT partition's rows, counted up to `cap + 1` only.
-- (PL/pgSQL: its table is looked up when it runs, so this file also applies
-- before an upgraded table has its DEFAULT partition, `migrate --prepare`.)
CREATE OR REPLACE FUNCTION login_etl_default_size(cap bigint) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
BEGIN
    RETURN (SELECT count(*) FROM (SELECT 1 FROM user_logins_default LIMIT cap + 1) d);
END
$$;

-- login_etl_ensure_partition (0004), unless the DEFAULT partition holds
-- more than `max_move` rows: making a partition scans the DEFAULT one
-- under a lock its writes wait for, and moves the day's rows under it.
-- Then it only says so (one row, created NULL) and maintain swaps.
CREATE OR REPLACE FUNCTION login_etl_ensure_partition(for_day date, max_move bigint)
RETURNS TABLE(created text, moved bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(5498692050214016076);
    IF EXISTS (SELECT 1 FROM login_etl_partitions() p
               WHERE NOT p.is_default AND (p.lo IS NULL OR p.lo <= for_day) AND p.hi > for_day) THEN
        RETURN;
    END IF;
    IF login_etl_default_size(max_move) > max_move THEN
        created := NULL;
        moved := NULL;
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM login_etl_ensure_partition(for_day);
END
$$;

CREATE OR REPLACE FUNCTION login_etl_swap_default(live_days date[])
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
    v_day date;
BEGIN
    PERFORM pg_advisory_xact_lock(5498692050214016076);
    -- The key switch's lock ("LE_KEYV1", taken exclusively by
    -- login_etl_switch_key): without it a switch committing beside this
    -- swap saw no drain and the swap no re-key, and the walk missed the
    -- drained rows. Taken, the next statement sees a switch committed.
    PERFORM pg_advisory_xact_lock_shared(5495903697166226993);
    IF to_regclass('user_logins_drain') IS NOT NULL THEN
        RETURN false;
    END IF;
    IF (SELECT rekey_from FROM user_logins_key_state) IS NOT NULL THEN
        RAISE EXCEPTION 'a masking-key re-key (login-etl rotate-key) is under way: the DEFAULT partition is emptied after it'
            USING ERRCODE = 'LE007';
    END IF;
    SELECT greatest(c.reltuples, 0)::bigint INTO v_rows FROM pg_class c WHERE c.oid = 'user_logins_default'::regclass;
    ALTER TABLE user_logins DETACH PARTITION user_logins_default;
    ALTER TABLE user_logins_default RENAME TO user_logins_drain;
    CREATE TABLE user_logins_default PARTITION OF user_logins DEFAULT;
    INSERT INTO user_logins_default_drains (rows_estimate) VALUES (v_rows);
    -- The days writes go to now (today, yesterday's late messages) get
    -- their partition in the same moment, while the new DEFAULT partition
    -- is empty: no later attach then waits for writes going there.
    FOREACH v_day IN ARRAY live_days LOOP
        PERFORM login_etl_ensure_partition(v_day);
    END LOOP;
    RETURN true;
END
$$;

-- What the swapped-out DEFAULT partition holds, by day (their partitions
-- are made before its rows move back).
-- One core: a parallel scan of a day's rows took both cores of the bench
-- machine from the writes beside it (benches/stalls.rs).
CREATE OR REPLACE FUNCTION login_etl_drain_days()
RETURNS TABLE(day date, row_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET max_parallel_workers_per_gather = 0 AS $$
BEGIN
    IF to_regclass('user_logins_drain') IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE 'SELECT create_date, count(*) FROM user_logins_drain GROUP BY 1 ORDER BY 1';
END
$$;

-- Moves pages [from_page, from_page + pages) of the swapped-out DEFAULT
-- partition back through user_logins (each row to its partition; a row
-- delivered again meanwhile stays single). Returns the rows taken and the
-- next page; past the last page it drops the emptied table, ends the
-- drain, and returns no next page.
CREATE OR REPLACE FUNCTION login_etl_drain_default(from_page bigint, pages integer,
    OUT moved bigint, OUT next_page bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_cols text;
    v_pages bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(5498692050214016076);
    moved := 0;
    IF to_regclass('user_logins_drain') IS NULL THEN
        RETURN;
    END IF;
    v_pages := pg_relation_size('user_logins_drain') / current_setting('block_size')::int8;
    IF from_page >= v_pages THEN
        DROP TABLE user_logins_drain;
        UPDATE user_logins_default_drains SET finished_at = now() WHERE finished_at IS NULL;
        RETURN;
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
        FROM pg_attribute a WHERE a.attrelid = 'user_logins'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    EXECUTE format('WITH m AS (DELETE FROM user_logins_drain WHERE ctid >= %L::tid AND ctid < %L::tid RETURNING %s), '
                   'ins AS (INSERT INTO user_logins (%s) SELECT %s FROM m ON CONFLICT DO NOTHING) '
                   'SELECT count(*) FROM m',
                   format('(%s,0)', from_page), format('(%s,0)', from_page + pages), v_cols, v_cols, v_cols)
        INTO moved;
    next_page := from_page + pages;
END
$$;

REVOKE ALL ON FUNCTION login_etl_default_size(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_ensure_partition(date, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_swap_default(date[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_drain_days() FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_drain_default(bigint, integer) FROM PUBLIC;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['login_etl_drain_state()', 'login_etl_default_size(bigint)',
                             'login_etl_ensure_partition(date, bigint)', 'login_etl_swap_default(date[])', 'login_etl_drain_days()',
                             'login_etl_drain_default(bigint, integer)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_catalog, pg_temp', f, current_schema());
    END LOOP;
END
$$;

-- Maintain roles granted before this version: the functions above too.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT grantee FROM information_schema.role_routine_grants
        WHERE routine_schema = current_schema() AND routine_name = 'login_etl_ensure_partition'
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_default_size(bigint) TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_ensure_partition(date, bigint) TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_swap_default(date[]) TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_drain_days() TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_drain_default(bigint, integer) TO %I', r.grantee);
    END LOOP;
END
$$;

-- The schema's version: `login-etl migrate` applies these files again when
-- the database's is older (src/schema/mod.rs).
CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 7 $$;
