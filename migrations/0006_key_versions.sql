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
    rekey_vault bigint NOT NULL DEFAULT 0
);
INSERT INTO user_logins_key_state (singleton) VALUES (true) ON CONFLICT DO NOTHING;

-- Each row's version: the proof of progress of a re-key (a row is re-keyed
-- in the statement that moves it to the next version, so never twice). A
-- constant default: no table rewrite, rows from before are version 1.
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS key_version smallint NOT NULL DEFAULT 1;

-- The vault's entries carry their token's version too, and the form of
-- their associated data: 1 binds the ciphertext to its token (entries
-- written before this version), 2 to its kind and the entry's own nonce,
-- so rotate-key can re-key the token without decrypting (src/vault.rs).
ALTER TABLE user_logins_pii_vault ADD COLUMN IF NOT EXISTS key_version smallint NOT NULL DEFAULT 1;
ALTER TABLE user_logins_pii_vault ADD COLUMN IF NOT EXISTS aad_version smallint NOT NULL DEFAULT 1;
ALTER TABLE user_logins_pii_vault_held ADD COLUMN IF NOT EXISTS key_version smallint NOT NULL DEFAULT 1;
ALTER TABLE user_logins_pii_vault_held ADD COLUMN IF NOT EXISTS aad_version smallint NOT NULL DEFAULT 1;

-- The erasure list is re-keyed in place, one version at a time: the
-- append-only trigger lets an UPDATE through only when it changes nothing
-- but user_key and moves key_version up by one (rotate-key's), so nobody
-- takes a user off the list.
ALTER TABLE user_logins_erased ADD COLUMN IF NOT EXISTS key_version smallint NOT NULL DEFAULT 1;

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
    current_version smallint := (SELECT version FROM user_logins_key_state);
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
    IF coalesce((SELECT version FROM user_logins_key_state), 1) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the masking key was rotated (login-etl rotate-key) and this function predates key versions: deploy the current version';
    END IF;
    PERFORM login_etl_refuse_erased(known, 1);
END
$$;

-- rotate-key audits its start and its end, with what it did in `detail`;
-- vault-upgrade (the reveal role) audits its re-sealing.
ALTER TABLE user_logins_pii_audit ADD COLUMN IF NOT EXISTS detail jsonb;
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
CREATE OR REPLACE FUNCTION login_etl_begin_rekey(to_version smallint, old_keys text[], new_keys text[], caller text)
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
        changed_at = now(), rekey_rows = 0, rekey_vault = 0;
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey_begun', caller, jsonb_build_object('from_version', to_version - 1,
                'to_version', to_version, 'erasures_rekeyed', v_moved));
END
$$;

-- rotate-key's end: once every row and vault entry is under the new
-- version, the re-key is over (forget may run again) and audited with the
-- counts of every run that took part.
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
    IF EXISTS (SELECT 1 FROM user_logins_pii_vault WHERE key_version < v_state.version) THEN
        RAISE EXCEPTION 'vault entries under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    UPDATE user_logins_key_state SET rekey_from = NULL, changed_at = now();
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey', caller, jsonb_build_object('from_version', v_state.rekey_from,
                'to_version', v_state.version, 'rows_rekeyed', v_state.rekey_rows,
                'vault_entries_rekeyed', v_state.rekey_vault,
                'started_at', v_state.changed_at, 'seconds_this_run', seconds));
END
$$;

REVOKE ALL ON FUNCTION login_etl_begin_rekey(smallint, text[], text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_end_rekey(text, double precision) FROM PUBLIC;
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['login_etl_begin_rekey(smallint, text[], text[], text)',
                             'login_etl_end_rekey(text, double precision)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_catalog, pg_temp', f, current_schema());
    END LOOP;
END
$$;
