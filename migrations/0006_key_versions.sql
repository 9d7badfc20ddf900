-- Masking-key versions (login-etl rotate-key, src/rekey.rs). Applied with
-- 0001 to 0005 (and by `migrate --prepare`), idempotent.
--
-- Every stored token carries the version of the key chain it was computed
-- under (src/masking.rs): version n is HMAC(kₙ, token of version n-1). The
-- database holds the current version; every write checks it
-- (login_etl_refuse_erased below), so a function that still holds an older
-- key cannot commit a row under it once a rotation has begun.

-- The current version, and the rotation under way (rekey_from set while
-- rotate-key re-keys what was stored under rekey_from).
CREATE TABLE IF NOT EXISTS user_logins_key_state(
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     smallint NOT NULL DEFAULT 1 CHECK (version >= 1),
    rekey_from  smallint CHECK (rekey_from = version - 1),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    -- What the re-key under way has done, in the transactions that did it
    -- (so a run that was killed and a rerun add up exactly).
    rekey_rows  bigint NOT NULL DEFAULT 0,
    rekey_vault bigint NOT NULL DEFAULT 0,
    -- Check values of the current version's keys: HMAC(key chain, a fixed
    -- label), set by the first program that uses them (the function,
    -- forget, rotate-key) and compared by every later one, so that a
    -- secret replaced instead of appended to, or a forget given the wrong
    -- erasure key, is refused instead of silently writing tokens or user
    -- keys that match nothing stored.
    masking_check varchar(64) COLLATE "C",
    erasure_check varchar(64) COLLATE "C",
    -- The erasure list was written before erasure keys existed, with user
    -- keys derived from the masking key: the function keeps deriving them
    -- (and forget needs the masking key) whatever ERASURE_KEY says.
    erasure_derived boolean NOT NULL DEFAULT false
);
INSERT INTO user_logins_key_state (singleton, erasure_derived)
    VALUES (true, EXISTS (SELECT 1 FROM user_logins_erased)) ON CONFLICT DO NOTHING;

-- Each row's version (user_logins.key_version) is added by 0001, which
-- alone touches user_logins: this file also runs beside an old version's
-- writes (`migrate --prepare`), where the table takes no lock but a short,
-- retried one (src/schema/convert.rs).

-- The vault's entries carry their token's version too, and the form of
-- their associated data: 1 binds the ciphertext to its token (entries
-- written before this version), 2 to its kind and the entry's own nonce,
-- so rotate-key can re-key the token without decrypting (src/vault.rs).
-- The erasure list is re-keyed in place, one version at a time: the
-- append-only trigger lets an UPDATE through only when it changes nothing
-- but user_key and moves key_version up by one (rotate-key's), so nobody
-- takes a user off the list. The entries from before are version 1; a new
-- one names its version, and one that does not (a forget from before key
-- versions: its user key may be derived where the function's is not) gets
-- 0, which the trigger refuses.
-- Each ALTER only when it changes something: ALTER TABLE takes ACCESS
-- EXCLUSIVE even when it changes nothing, and every write reads the
-- erasure list (this file also runs beside live ingest).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('user_logins_pii_vault', 'key_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_vault', 'aad_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_vault_held', 'key_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_vault_held', 'aad_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_erased', 'key_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_audit', 'detail', 'jsonb')) AS v(t, col, decl)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(c.t)
                       AND attname = c.col AND NOT attisdropped) THEN
            EXECUTE format('ALTER TABLE %I ADD COLUMN %I %s', c.t, c.col, c.decl);
        END IF;
    END LOOP;
    IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'user_logins_erased'::regclass AND a.attname = 'key_version') IS DISTINCT FROM '0' THEN
        ALTER TABLE user_logins_erased ALTER COLUMN key_version SET DEFAULT 0;
    END IF;
END
$$;

-- A user key enters the list at the database's key version only: a
-- `forget` from before key versions (its keys are of version 1) is refused
-- once a rotation has begun, instead of listing a key nothing matches.
CREATE OR REPLACE FUNCTION login_etl_erased_current_version() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_version smallint := coalesce((SELECT s.version FROM login_etl_key_state() s), 1);
BEGIN
    IF NEW.key_version = 0 THEN
        RAISE EXCEPTION 'this login-etl forget predates key versions: run the current one (its user key could match nothing the function computes)'
            USING ERRCODE = 'LE001';
    END IF;
    IF NEW.key_version <> v_version THEN
        RAISE EXCEPTION 'a user key of masking-key version % cannot join the erasure list at version %: this login-etl forget predates key versions; run the current one', NEW.key_version, v_version
            USING ERRCODE = 'LE001';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION login_etl_erased_rekey_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = OLD.seq AND NEW.erased_at = OLD.erased_at
       AND NEW.key_version = OLD.key_version + 1 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only (a re-key may only move a user key to the next version)', TG_TABLE_NAME;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_erased_append_only'
               AND tgrelid = to_regclass('user_logins_erased')) THEN
        DROP TRIGGER user_logins_erased_append_only ON user_logins_erased;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_erased_rekey_only'
                   AND tgrelid = to_regclass('user_logins_erased')) THEN
        CREATE TRIGGER user_logins_erased_rekey_only
            BEFORE UPDATE ON user_logins_erased
            FOR EACH ROW EXECUTE FUNCTION login_etl_erased_rekey_only();
        CREATE TRIGGER user_logins_erased_no_delete
            BEFORE DELETE OR TRUNCATE ON user_logins_erased
            FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only();
        CREATE TRIGGER user_logins_erased_current_version
            BEFORE INSERT ON user_logins_erased
            FOR EACH ROW EXECUTE FUNCTION login_etl_erased_current_version();
    END IF;
END
$$;

-- The key's state, readable by every role without a grant on the table
-- (roles granted before this version keep working after `migrate`): the
-- owner's function, with a fixed search_path (set below).
CREATE OR REPLACE FUNCTION login_etl_key_state(OUT version smallint, OUT rekey_from smallint,
    OUT masking_check varchar, OUT erasure_check varchar, OUT erasure_derived boolean)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT version, rekey_from, masking_check, erasure_check, erasure_derived FROM user_logins_key_state
$$;

-- Records the check values of `for_version`'s keys where none is recorded
-- yet, and refuses (SQLSTATE LE004) keys whose check differs: a masking
-- key that is not the one the stored tokens are under, an erasure key that
-- is not the one the erasure list is keyed with. NULL: not checked (a
-- program that does not hold that key).
CREATE OR REPLACE FUNCTION login_etl_check_keys(for_version smallint, masking text, erasure text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
BEGIN
    SELECT * INTO v_state FROM user_logins_key_state;
    IF v_state.version <> for_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, not %s', v_state.version, for_version);
    END IF;
    IF masking IS NOT NULL AND v_state.masking_check IS DISTINCT FROM masking THEN
        IF v_state.masking_check IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the masking key of version %s is not the one the stored tokens are under (was the secret replaced instead of a version appended?)', for_version);
        END IF;
        UPDATE user_logins_key_state SET masking_check = masking WHERE masking_check IS NULL;
        -- Another program may have recorded its own meanwhile (a new
        -- statement sees what it committed).
        IF (SELECT s.masking_check FROM user_logins_key_state s) IS DISTINCT FROM masking THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the masking key of version %s is not the one another program recorded at the same moment', for_version);
        END IF;
    END IF;
    IF erasure IS NOT NULL AND v_state.erasure_check IS DISTINCT FROM erasure THEN
        IF v_state.erasure_check IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the erasure key of version %s is not the one the erasure list is keyed with', for_version);
        END IF;
        UPDATE user_logins_key_state SET erasure_check = erasure WHERE erasure_check IS NULL;
        IF (SELECT s.erasure_check FROM user_logins_key_state s) IS DISTINCT FROM erasure THEN
            RAISE EXCEPTION USING ERRCODE = 'LE004',
                MESSAGE = format('the erasure key of version %s is not the one another program recorded at the same moment', for_version);
        END IF;
    END IF;
END
$$;

-- The write check of this version: LE001 when the erasure list changed
-- since `known` (as before), LE002 when the key version is not `key_version`
-- (a rotation began: the function reloads its keys, re-keys the batch's
-- tokens and writes again). Both after the write's ROW EXCLUSIVE lock,
-- which rotate-key's switch (SHARE ROW EXCLUSIVE) waits for.
CREATE OR REPLACE FUNCTION login_etl_refuse_erased(known bigint, key_version integer) RETURNS void
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

-- The check a function from before this version calls: it knows one key
-- only, so it may write only while the database is at version 1. It is
-- refused with LE001, which it knows: it reloads the erasure list, tries
-- again a few times, then fails the batch as retryable (never the DLQ).
CREATE OR REPLACE FUNCTION login_etl_refuse_erased(known bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF coalesce((SELECT s.version FROM login_etl_key_state() s), 1) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the masking key was rotated (login-etl rotate-key) and this function predates key versions: deploy the current version';
    END IF;
    PERFORM login_etl_refuse_erased(known, 1);
END
$$;

-- rotate-key audits its start and its end, with what it did in `detail`
-- (the column is added above); vault-upgrade (the reveal role) audits its
-- re-sealing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'user_logins_pii_audit'::regclass
                     AND conname = 'user_logins_pii_audit_action_check'
                     AND pg_get_constraintdef(oid) LIKE '%vault_upgrade%') THEN
        ALTER TABLE user_logins_pii_audit DROP CONSTRAINT IF EXISTS user_logins_pii_audit_action_check;
        ALTER TABLE user_logins_pii_audit ADD CONSTRAINT user_logins_pii_audit_action_check
            CHECK (action IN ('reveal', 'forget', 'forget_begun', 'rekey_begun', 'rekey', 'vault_upgrade'));
    END IF;
END
$$;

-- rotate-key's switch (src/rekey.rs), run as the owner so the rotate role
-- needs no table lock of its own. In one moment (the caller's lock_timeout
-- bounds every wait): it waits for the forget steps in flight (their
-- advisory lock) and the write transactions in flight (SHARE ROW
-- EXCLUSIVE on the parent only), refuses while an erasure is unfinished,
-- moves the erasure list to the next version with the user keys the caller
-- computed (old_keys[i] becomes new_keys[i]; all of them, or nothing), sets
-- the version, and audits the start. Every write after it is checked
-- against the new version, so no row is stored under the old key again.
CREATE OR REPLACE FUNCTION login_etl_begin_rekey(to_version smallint, old_keys text[], new_keys text[], caller text,
    masking_check text, erasure_check text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
    v_moved bigint;
    v_unfinished bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(5495903697166226993);  -- "LE_KEYV1", forget's (src/reveal.rs)
    LOCK TABLE ONLY user_logins IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_state FROM user_logins_key_state FOR UPDATE;
    IF v_state.rekey_from IS NOT NULL OR v_state.version <> to_version - 1 THEN
        RAISE EXCEPTION 'the key is at version % (re-keying: %), not % ready to move to %',
            v_state.version, v_state.rekey_from IS NOT NULL, to_version - 1, to_version
            USING ERRCODE = '55000';
    END IF;
    SELECT count(DISTINCT user_key) INTO v_unfinished FROM (
        SELECT user_key FROM user_logins_erasure_tokens UNION ALL SELECT user_key FROM user_logins_pii_vault_held) u;
    IF EXISTS (SELECT 1 FROM user_logins_pii_vault WHERE aad_version = 1) THEN
        RAISE EXCEPTION 'vault entries of the form bound to their token remain'
            USING ERRCODE = 'LE005',
                  HINT = 'run login-etl vault-upgrade as the reveal role, then rotate-key';
    END IF;
    IF v_unfinished > 0 THEN
        RAISE EXCEPTION '% erasures (login-etl forget) are unfinished', v_unfinished
            USING ERRCODE = 'LE003',
                  HINT = 'run login-etl forget again for those users (login-etl audit shows their forget_begun records without a forget), then rotate-key';
    END IF;
    UPDATE user_logins_erased e SET user_key = m.new_key, key_version = to_version
        FROM unnest(old_keys, new_keys) AS m(old_key, new_key)
        WHERE e.user_key = m.old_key AND e.key_version = to_version - 1;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    IF EXISTS (SELECT 1 FROM user_logins_erased WHERE key_version <> to_version) THEN
        RAISE EXCEPTION 'the erasure list changed while the new user keys were computed'
            USING ERRCODE = '40001';
    END IF;
    UPDATE user_logins_key_state SET version = to_version, rekey_from = to_version - 1,
        changed_at = now(), rekey_rows = 0, rekey_vault = 0,
        masking_check = login_etl_begin_rekey.masking_check,
        erasure_check = login_etl_begin_rekey.erasure_check;
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey_begun', caller, jsonb_build_object('from_version', to_version - 1,
                'to_version', to_version, 'erasures_rekeyed', v_moved));
END
$$;

-- rotate-key's switch since migrations/0007 (src/rekey.rs), run as the
-- owner so the rotate role needs no table lock of its own. In one moment
-- (the caller's lock_timeout bounds every wait), and only what cannot
-- happen apart from it: it waits for the forget steps in flight (their
-- advisory lock) and the write transactions in flight (SHARE ROW
-- EXCLUSIVE on the parent only), refuses while an erasure is unfinished
-- (two small tables) or the vault holds entries of the old form (a probe
-- of the partial index user_logins_pii_vault_form1, which `login-etl
-- migrate` builds online), sets the version and audits the start. Every
-- write after it is checked against the new version, so no row is stored
-- under the old key again. The erasure list is re-keyed after it, in
-- chunks (login_etl_rekey_erased_chunk), while writers check a user at
-- both versions (src/sink: the list's rekey_from): nothing that scales
-- with the vault or the list holds the lock (login_etl_begin_rekey, kept
-- for rotate-key binaries from before, did both under it).
CREATE OR REPLACE FUNCTION login_etl_switch_key(to_version smallint, caller text,
    masking_check text, erasure_check text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
    v_unfinished bigint;
    v_form1 boolean;
    v_seqscan text := current_setting('enable_seqscan');
BEGIN
    PERFORM pg_advisory_xact_lock(5495903697166226993);  -- "LE_KEYV1", forget's (src/reveal.rs)
    LOCK TABLE ONLY user_logins IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_state FROM user_logins_key_state FOR UPDATE;
    IF v_state.rekey_from IS NOT NULL OR v_state.version <> to_version - 1 THEN
        RAISE EXCEPTION 'the key is at version % (re-keying: %), not % ready to move to %',
            v_state.version, v_state.rekey_from IS NOT NULL, to_version - 1, to_version
            USING ERRCODE = '55000';
    END IF;
    IF to_regclass('user_logins_drain') IS NOT NULL THEN
        RAISE EXCEPTION 'maintain is moving a swapped-out DEFAULT partition''s rows back into user_logins'
            USING ERRCODE = 'LE007',
                  HINT = 'its rows are out of the re-key''s sight until then: let login-etl maintain finish, then rotate-key';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('user_logins_pii_vault_form1')
                   AND indisvalid AND indisready) THEN
        RAISE EXCEPTION 'the vault''s index of entries of the old form (user_logins_pii_vault_form1) is missing'
            USING ERRCODE = 'LE006',
                  HINT = 'run login-etl migrate (it builds the index online), then rotate-key';
    END IF;
    -- A probe of the partial index, whatever the statistics say (a scan
    -- of the vault here would hold every write up).
    PERFORM set_config('enable_seqscan', 'off', true);
    v_form1 := EXISTS (SELECT 1 FROM user_logins_pii_vault WHERE aad_version = 1);
    PERFORM set_config('enable_seqscan', v_seqscan, true);
    IF v_form1 THEN
        RAISE EXCEPTION 'vault entries of the form bound to their token remain'
            USING ERRCODE = 'LE005',
                  HINT = 'run login-etl vault-upgrade as the reveal role, then rotate-key';
    END IF;
    SELECT count(DISTINCT user_key) INTO v_unfinished FROM (
        SELECT user_key FROM user_logins_erasure_tokens UNION ALL SELECT user_key FROM user_logins_pii_vault_held) u;
    IF v_unfinished > 0 THEN
        RAISE EXCEPTION '% erasures (login-etl forget) are unfinished', v_unfinished
            USING ERRCODE = 'LE003',
                  HINT = 'run login-etl forget again for those users (login-etl audit shows their forget_begun records without a forget), then rotate-key';
    END IF;
    UPDATE user_logins_key_state SET version = to_version, rekey_from = to_version - 1,
        changed_at = now(), rekey_rows = 0, rekey_vault = 0,
        masking_check = login_etl_switch_key.masking_check,
        erasure_check = login_etl_switch_key.erasure_check;
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey_begun', caller, jsonb_build_object('from_version', to_version - 1,
                'to_version', to_version));
END
$$;

-- rotate-key's end, once its walk of the rows (src/rekey.rs) is done: it
-- checks that no vault entry, erasure-list entry or audit record is left
-- under the old version, ends the re-key (forget may run again) and audits
-- it with the counts of every run that took part.
CREATE OR REPLACE FUNCTION login_etl_end_rekey(caller text, seconds double precision)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
BEGIN
    SELECT * INTO v_state FROM user_logins_key_state FOR UPDATE;
    IF v_state.rekey_from IS NULL THEN
        RETURN;
    END IF;
    -- Rows of a swapped-out DEFAULT partition were out of the walk's sight
    -- (migrations/0007 keeps a swap and a switch apart; this is the check).
    IF to_regclass('user_logins_drain') IS NOT NULL THEN
        RAISE EXCEPTION 'a swapped-out DEFAULT partition (user_logins_drain) holds rows the re-key did not walk'
            USING ERRCODE = 'LE007',
                  HINT = 'let login-etl maintain finish moving them back, then run login-etl rotate-key again';
    END IF;
    IF EXISTS (SELECT 1 FROM user_logins_pii_vault WHERE key_version < v_state.version) THEN
        RAISE EXCEPTION 'vault entries under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    IF EXISTS (SELECT 1 FROM user_logins_erased WHERE key_version < v_state.version) THEN
        RAISE EXCEPTION 'erasure-list entries under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    IF EXISTS (SELECT 1 FROM user_logins_pii_audit WHERE key_version < v_state.version
               AND (token IS NOT NULL OR user_key IS NOT NULL)) THEN
        RAISE EXCEPTION 'audit records under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    UPDATE user_logins_key_state SET rekey_from = NULL, changed_at = now();
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey', caller, jsonb_build_object('from_version', v_state.rekey_from,
                'to_version', v_state.version, 'rows_rekeyed', v_state.rekey_rows,
                'vault_entries_rekeyed', v_state.rekey_vault,
                'erasures_rekeyed', (SELECT count(*) FROM user_logins_erased),
                'started_at', v_state.changed_at, 'seconds_this_run', seconds));
END
$$;

REVOKE ALL ON FUNCTION login_etl_begin_rekey(smallint, text[], text[], text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_switch_key(smallint, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_end_rekey(text, double precision) FROM PUBLIC;
-- Only the programs that hold keys record their check values (login-etl
-- grants: ingest, erase, rotate), never any role that may connect.
REVOKE ALL ON FUNCTION login_etl_check_keys(smallint, text, text) FROM PUBLIC;
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['login_etl_begin_rekey(smallint, text[], text[], text, text, text)',
                             'login_etl_switch_key(smallint, text, text, text)',
                             'login_etl_end_rekey(text, double precision)', 'login_etl_key_state()',
                             'login_etl_check_keys(smallint, text, text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_catalog, pg_temp', f, current_schema());
    END LOOP;
END
$$;

-- Roles granted before this version: the same privileges on the new
-- columns as they hold on a column beside them, so that `migrate` alone
-- keeps the function, reveal and forget working (`login-etl grants` prints
-- the same for new roles).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT p.grantee, p.privilege_type, p.table_name, cols.c
        FROM information_schema.column_privileges p
        JOIN (VALUES ('user_logins_pii_vault', 'nonce', 'key_version, aad_version'),
                     ('user_logins_pii_vault_held', 'nonce', 'key_version, aad_version'),
                     ('user_logins_erased', 'user_key', 'key_version'),
                     ('user_logins_pii_audit', 'data_key_id', 'detail'),
                     ('user_logins_pii_audit', 'vault_entries_deleted', 'detail')) AS cols(t, ref, c)
          ON p.table_name = cols.t AND p.column_name = cols.ref
        WHERE p.table_schema = current_schema() AND p.privilege_type IN ('SELECT', 'INSERT')
          AND p.grantee NOT IN (current_user, 'PUBLIC')
          AND p.grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT %s (%s) ON %I TO %I', r.privilege_type, r.c, r.table_name, r.grantee);
    END LOOP;
END
$$;

-- The roles from before that hold a key (the function's, forget's) may
-- record and compare the keys' check values, as new ones may.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT grantee FROM information_schema.column_privileges
        WHERE table_schema = current_schema() AND privilege_type = 'INSERT'
          AND ((table_name = 'user_logins_pii_vault' AND column_name = 'nonce')
               OR (table_name = 'user_logins_erased' AND column_name = 'user_key'))
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
        UNION
        SELECT DISTINCT grantee FROM information_schema.role_routine_grants
        WHERE routine_schema = current_schema() AND routine_name = 'login_etl_refuse_erased'
          AND grantee NOT IN (current_user, 'PUBLIC') AND grantee IN (SELECT rolname FROM pg_roles)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION login_etl_check_keys(smallint, text, text) TO %I', r.grantee);
    END LOOP;
END
$$;
